"""05's exercise checks: the untouched scaffold, a placeholder, wrong answers and a crash say "Not yet"
with a hint and never raise; the solutions say "Right"; no message holds the answer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlhelpers import exercises
from tlhelpers.exercises import nb05


@pytest.fixture(autouse=True)
def fresh_history():
    exercises.HISTORY.clear()
    yield
    exercises.HISTORY.clear()


def unfreeze_last(model, k):
    model.requires_grad_(False)
    model.features[-k:].requires_grad_(True)
    model.classifier.requires_grad_(True)


def param_groups(model, head_lr, decay):
    groups = [{"params": list(model.classifier.parameters()), "lr": head_lr}]
    for i, block in enumerate(model.features):
        params = [p for p in block.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": head_lr * decay ** (len(model.features) - i)})
    return groups


def train_step(model, optimizer, images, labels):
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and not any(p.requires_grad for p in module.parameters()):
            module.eval()
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


RIGHT = {"q1": ("unfreeze_last", unfreeze_last), "q2": ("param_groups", param_groups),
         "q3": ("train_step", train_step)}


@pytest.mark.parametrize("q", sorted(RIGHT))
def test_placeholder_and_untouched_scaffold_say_not_yet(q):
    name, _ = RIGHT[q]
    check = getattr(nb05, q)
    feedback = check(**{name: ...})
    assert not feedback and "still `...`" in str(feedback) and "Hint:" in str(feedback)

    def scaffold(*args):
        ...

    feedback = check(**{name: scaffold})
    assert not feedback and "Hint:" in str(feedback)


@pytest.mark.parametrize("q", sorted(RIGHT))
def test_right_answers(q):
    name, function = RIGHT[q]
    feedback = getattr(nb05, q)(**{name: function})
    assert feedback and str(feedback).startswith("Right."), str(feedback)


def test_verify_after_scaffold_then_solution():
    for q, (name, function) in RIGHT.items():
        assert not getattr(nb05, q)(**{name: ...})
        assert getattr(nb05, q)(**{name: function})
    assert "every exercise" in exercises.verify("nb05")


def hard_coded(model, k):                       # the notebook's slice, whatever k is
    model.requires_grad_(False)
    model.features[14:].requires_grad_(True)
    model.classifier.requires_grad_(True)


def no_freeze(model, k):
    model.features[-k:].requires_grad_(True)


def head_frozen(model, k):
    model.requires_grad_(False)
    model.features[-k:].requires_grad_(True)


@pytest.mark.parametrize("wrong, says", [(hard_coded, "k="), (no_freeze, "outside the last k"),
                                         (head_frozen, "classifier"), (lambda m, k: 1 / 0, "ZeroDivisionError")])
def test_q1_wrong(wrong, says):
    feedback = nb05.q1(unfreeze_last=wrong)
    assert not feedback and says in feedback.message and "Hint:" in str(feedback)


def lr_scale_groups(model, head_lr, decay):
    return [{"params": list(model.classifier.parameters())},
            {"params": [p for p in model.features.parameters() if p.requires_grad], "lr_scale": decay}]


def one_rate(model, head_lr, decay):
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": head_lr}]


def with_frozen(model, head_lr, decay):
    groups = param_groups(model, head_lr, decay)
    groups.append({"params": list(model.features[0].parameters()), "lr": head_lr})
    return groups


def head_missing(model, head_lr, decay):
    return param_groups(model, head_lr, decay)[1:]


def twice(model, head_lr, decay):
    return param_groups(model, head_lr, decay) + [{"params": list(model.classifier.parameters()), "lr": head_lr}]


@pytest.mark.parametrize("wrong, says", [(lr_scale_groups, "lr_scale"), (one_rate, "not at its rate"),
                                         (with_frozen, "frozen parameter"), (head_missing, "in no group"),
                                         (twice, "refuses"), (lambda m, h, d: None, "returned None")])
def test_q2_wrong(wrong, says):
    feedback = nb05.q2(param_groups=wrong)
    assert not feedback and says in feedback.message


def _frozen_bn_eval(model):                                # the right modes: frozen BatchNorm in eval()
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and not module.weight.requires_grad:
            module.eval()


def _learn(model, optimizer, images, labels, zero_grad=True, step=True):
    """The tail every wrong answer shares with the right one, each part optional."""
    if zero_grad:
        optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    if step:
        optimizer.step()
    return loss


def no_zero_grad(model, optimizer, images, labels):
    _frozen_bn_eval(model)
    return _learn(model, optimizer, images, labels, zero_grad=False)


def every_bn_eval(model, optimizer, images, labels):      # the notebook's own loop: the "eval" policy
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return _learn(model, optimizer, images, labels)


def every_bn_train(model, optimizer, images, labels):     # a plain model.train(): the "train" policy
    model.train()
    return _learn(model, optimizer, images, labels)


def all_eval(model, optimizer, images, labels):
    model.eval()
    return _learn(model, optimizer, images, labels)


def dropout_off(model, optimizer, images, labels):         # the right BatchNorm modes, Dropout off
    _frozen_bn_eval(model)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    return _learn(model, optimizer, images, labels)


def no_step(model, optimizer, images, labels):
    _frozen_bn_eval(model)
    return _learn(model, optimizer, images, labels, step=False)


def no_return(model, optimizer, images, labels):
    train_step(model, optimizer, images, labels)


def crash(model, optimizer, images, labels):
    return model(images[:, :1])                             # a wrong input shape: the check reports the error


@pytest.mark.parametrize("wrong, says", [(no_zero_grad, "earlier step"), (every_bn_eval, '"eval" policy'),
                                         (every_bn_train, '"train" policy'), (all_eval, '"eval" policy'),
                                         (dropout_off, "Dropout"), (no_step, "did not change"),
                                         (no_return, "returned None"), (crash, "RuntimeError")])
def test_q3_wrong(wrong, says):
    feedback = nb05.q3(train_step=wrong)
    assert not feedback and says in feedback.message and "Hint:" in str(feedback), str(feedback)
    assert "module.eval()" not in str(feedback) and "requires_grad" not in str(feedback)


def test_checks_never_touch_global_state_they_do_not_restore():
    before = torch.is_grad_enabled()
    nb05.q3(train_step=train_step)
    assert torch.is_grad_enabled() == before
