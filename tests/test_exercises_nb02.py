"""02's exercise checks on a small real model (MobileNetV2, random weights): a placeholder, the silent freezing
mistakes, wrong answers and a crash say "Not yet" with the hint; a right answer says "Right"."""

from __future__ import annotations

import pytest
import torchvision
from torch import nn

from tlhelpers import exercises
from tlhelpers.exercises import nb02


@pytest.fixture(autouse=True)
def fresh_history():
    exercises.HISTORY.clear()
    yield
    exercises.HISTORY.clear()


@pytest.fixture(scope="module")
def model():
    return torchvision.models.mobilenet_v2(weights=None)


def bn_only(model):
    for module in model.modules():
        for p in module.parameters(recurse=False):
            p.requires_grad = isinstance(module, nn.BatchNorm2d)


def typo(model):
    for p in model.parameters():
        p.require_grad = False


def only_false(model):
    for module in model.modules():
        if not isinstance(module, nn.BatchNorm2d):
            for p in module.parameters(recurse=False):
                p.requires_grad = False


def test_q1(model):
    assert "still `...`" in str(nb02.q1(train_bn_only=..., model=model))

    def train_bn_only(model):
        ...
    assert "every parameter is still trainable" in nb02.q1(train_bn_only=train_bn_only, model=model).message
    assert "every parameter is still trainable" in nb02.q1(train_bn_only=typo, model=model).message
    assert "fully frozen" in nb02.q1(train_bn_only=only_false, model=model).message
    everything_but_head = lambda m: m.classifier.requires_grad_(False)          # noqa: E731
    assert "should be frozen" in nb02.q1(train_bn_only=everything_but_head, model=model).message
    feedback = nb02.q1(train_bn_only=bn_only, model=model)
    assert feedback and "BatchNorm" in str(feedback)
    assert all(p.requires_grad for p in model.parameters())                    # the learner's model is untouched


def right(model, prefix):
    matched = [p for name, p in model.named_parameters() if name.startswith(prefix + ".")]
    if not matched:
        raise KeyError(prefix)
    for p in model.parameters():
        p.requires_grad = False
    for p in matched:
        p.requires_grad = True
    return sum(p.numel() for p in matched)


def naive_prefix(model, prefix):
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(prefix)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not total:
        raise KeyError(prefix)
    return total


def no_key_error(model, prefix):
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(prefix + ".")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_q2(model):
    def freeze_all_but(model, prefix):
        ...
    feedback = nb02.q2(freeze_all_but=freeze_all_but, model=model)
    assert not feedback and "Hint:" in str(feedback)
    assert "which names start with 'features.1'" in nb02.q2(freeze_all_but=naive_prefix, model=model).message
    assert "KeyError" in nb02.q2(freeze_all_but=no_key_error, model=model).message
    returns_none = lambda m, prefix: right(m, prefix) and None                  # noqa: E731
    assert "returned None" in nb02.q2(freeze_all_but=returns_none, model=model).message
    feedback = nb02.q2(freeze_all_but=right, model=model)
    assert feedback, str(feedback)
    assert "every exercise" not in ""                                           # verify needs q1 too
    nb02.q1(train_bn_only=..., model=model)
    nb02.q1(train_bn_only=bn_only, model=model)
    exercises.HISTORY[("tlhelpers.exercises.nb02", "q2")] = [False, True]
    assert "every exercise" in exercises.verify("nb02")


def test_q2_on_resnet():
    resnet = torchvision.models.resnet18(weights=None)
    assert nb02.q2(freeze_all_but=right, model=resnet)
    assert not nb02.q2(freeze_all_but=lambda m, prefix: 1 / 0, model=resnet)
