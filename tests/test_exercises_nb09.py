"""09's checks: the placeholder, the untouched scaffold, wrong answers and a crash say "Not yet" with a hint;
right answers say "Right"; verify sees the scaffold-then-solution order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlhelpers import exercises
from tlhelpers.exercises import nb09


@pytest.fixture(autouse=True)
def fresh_history():
    exercises.HISTORY.clear()
    yield
    exercises.HISTORY.clear()


def reestimate_right(model, images):
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
            module.train()
    with torch.no_grad():
        model(images)
    model.eval()


def reestimate_keeps_the_old(model, images):          # the default momentum mixes the old statistics in
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.train()
    with torch.no_grad():
        model(images)
    model.eval()


def reestimate_left_training(model, images):
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
            module.train()
    with torch.no_grad():
        model(images)


def reestimate_with_dropout(model, images):
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model(images)
    model.eval()


def bias_right(model):
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.bias.requires_grad_(True)
    model.classifier.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def bias_with_scales(model):
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.requires_grad_(True)
    model.classifier.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def bias_without_freezing(model):
    return list(model.parameters())


def bias_without_head(model):
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.bias.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def test_placeholders_and_untouched_scaffolds_say_not_yet_with_a_hint():
    for check, name in ((nb09.q1, "reestimate"), (nb09.q2, "bias_only_everywhere")):
        feedback = check(**{name: ...})
        assert not feedback and "still `...`" in str(feedback) and "Hint:" in str(feedback)

    def reestimate(model, images):
        ...

    def bias_only_everywhere(model):
        ...

    first = nb09.q1(reestimate=reestimate)
    assert not first and "old running mean" in first.message
    second = nb09.q2(bias_only_everywhere=bias_only_everywhere)
    assert not second and "returned None" in second.message


@pytest.mark.parametrize("answer, says", [
    (reestimate_keeps_the_old, "momentum"),
    (reestimate_left_training, "train mode"),
    (reestimate_with_dropout, "Dropout"),
    (lambda model, images: 1 / 0, "ZeroDivisionError"),
])
def test_q1_wrong_answers_say_what_is_wrong(answer, says):
    feedback = nb09.q1(reestimate=answer)
    assert not feedback and says in feedback.message and "Hint:" in str(feedback)


@pytest.mark.parametrize("answer, says", [
    (bias_with_scales, "BatchNorm scale"),
    (bias_without_freezing, "freeze everything"),
    (bias_without_head, "of the head"),
    (lambda model: 1 / 0, "ZeroDivisionError"),
])
def test_q2_wrong_answers_say_what_is_wrong(answer, says):
    feedback = nb09.q2(bias_only_everywhere=answer)
    assert not feedback and says in feedback.message


def test_right_answers_and_verify():
    assert not nb09.q1(reestimate=...)
    assert not nb09.q2(bias_only_everywhere=...)
    first = nb09.q1(reestimate=reestimate_right)
    second = nb09.q2(bias_only_everywhere=bias_right)
    assert first and str(first).startswith("Right.")
    assert second and "x the" in second.message
    assert "every exercise" in exercises.verify("nb09")
