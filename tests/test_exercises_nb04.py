"""The checks of notebook 04's exercises: a placeholder, the untouched scaffold, wrong answers and a
crash each say "Not yet" with a hint and never raise; a right answer says "Right"."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tlhelpers import exercises, training
from tlhelpers.exercises import nb04


@pytest.fixture(autouse=True)
def fresh_history():
    exercises.HISTORY.clear()
    yield
    exercises.HISTORY.clear()


# --------------------------------------------------------------------------- q1

def freeze_and_replace(model, num_classes):
    for p in model.parameters():
        p.requires_grad = False
    name, old = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent_name, _, child = name.rpartition(".")
    new = nn.Linear(old.in_features, num_classes)
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return new


def no_freeze(model, num_classes):
    name, old = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent_name, _, child = name.rpartition(".")
    new = nn.Linear(old.in_features, num_classes)
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return new


def mobilenet_only(model, num_classes):       # works for MobileNetV2, not for ResNet
    for p in model.parameters():
        p.requires_grad = False
    model.classifier[1] = nn.Linear(model.classifier[1].in_features, num_classes)
    return model.classifier[1]


def freeze_after_replacing(model, num_classes):
    new = no_freeze(model, num_classes)
    for p in model.parameters():
        p.requires_grad = False
    return new


def not_placed(model, num_classes):
    for p in model.parameters():
        p.requires_grad = False
    old = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return nn.Linear(old.in_features, num_classes)


def test_q1_placeholder_and_untouched_scaffold():
    feedback = nb04.q1(freeze_and_replace=...)
    assert not feedback and "still `...`" in str(feedback) and "Hint:" in str(feedback)

    def scaffold(model, num_classes):
        ...

    feedback = nb04.q1(freeze_and_replace=scaffold)
    assert not feedback and "returned None" in feedback.message


@pytest.mark.parametrize("answer, says", [
    (no_freeze, "only the new head"),
    (freeze_after_replacing, "only the new head"),
    (mobilenet_only, "resnet18"),
    (not_placed, "not where the head was"),
    (lambda model, n: 1 / 0, "ZeroDivisionError"),
])
def test_q1_wrong_answers_say_what_is_wrong(answer, says):
    feedback = nb04.q1(freeze_and_replace=answer)
    assert not feedback and says in feedback.message and "Hint:" in str(feedback)
    assert "setattr(model.get_submodule" not in str(feedback)


def test_q1_right():
    feedback = nb04.q1(freeze_and_replace=freeze_and_replace)
    assert feedback and str(feedback).startswith("Right.") and "resnet18 (fc)" in str(feedback)


# --------------------------------------------------------------------------- q2

def features(n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.randn(3, 16, generator=g)
    return TensorDataset(centres[labels] + 1.5 * torch.randn(n, 16, generator=g), labels)


TRAIN, VAL = features(60, 1), features(30, 2)


def one_epoch(head, loader, optimizer):
    head.train()
    for x, y in loader:
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(x), y).backward()
        optimizer.step()


def accuracy(head, loader):
    head.eval()
    with torch.inference_mode():
        right = sum((head(x).argmax(1) == y).sum().item() for x, y in loader)
    return right / sum(len(y) for _, y in loader)


def make(patience_rule="right", tie_is_best=False, load_back=True):
    def fit_with_patience(head, train_loader, val_loader, optimizer, max_epochs, patience):
        best_acc, best_epoch, best_state = -1.0, 0, None
        for epoch in range(1, max_epochs + 1):
            one_epoch(head, train_loader, optimizer)
            acc = accuracy(head, val_loader)
            if acc > best_acc or (tie_is_best and acc == best_acc):
                best_acc, best_epoch, best_state = acc, epoch, copy.deepcopy(head.state_dict())
            elif patience_rule == "right" and epoch - best_epoch >= patience:
                break
        if load_back:
            head.load_state_dict(best_state)
        return best_epoch
    return fit_with_patience


def calls_fit(head, train_loader, val_loader, optimizer, max_epochs, patience):
    return training.fit(head, train_loader, val_loader, optimizer, max_epochs, keep_best="val_acc",
                        patience=patience, progress=False).best_epoch()


def test_q2_right_and_the_reference_stops_early():
    feedback = nb04.q2(fit_with_patience=make(), train_features=TRAIN, val_features=VAL)
    assert feedback and str(feedback).startswith("Right."), str(feedback)
    assert f"of at most {nb04.MAX_EPOCHS}" in feedback.message
    assert f"after {nb04.MAX_EPOCHS} of" not in feedback.message      # patience stopped it: the test means something


def test_q2_placeholder_and_untouched_scaffold():
    assert "still `...`" in str(nb04.q2(fit_with_patience=..., train_features=TRAIN, val_features=VAL))

    def scaffold(head, train_loader, val_loader, optimizer, max_epochs, patience):
        ...

    feedback = nb04.q2(fit_with_patience=scaffold, train_features=TRAIN, val_features=VAL)
    assert not feedback and "returned None" in feedback.message


@pytest.mark.parametrize("answer, says", [
    (make(patience_rule="none"), "epochs"),
    (make(load_back=False), "weights of its best epoch"),
    (calls_fit, "training.fit"),
    (lambda *args: 1 / 0, "ZeroDivisionError"),
])
def test_q2_wrong_answers_say_what_is_wrong(answer, says):
    feedback = nb04.q2(fit_with_patience=answer, train_features=TRAIN, val_features=VAL)
    assert not feedback and says in feedback.message and "Hint:" in str(feedback)
    assert training.fit is not nb04._no_fit          # the check puts training.fit back


def test_q2_a_tie_is_not_a_new_best():
    feedback = nb04.q2(fit_with_patience=make(tie_is_best=True), train_features=TRAIN, val_features=VAL)
    assert not feedback        # with ties on 30 validation images the later epoch is kept or the stop moves


# --------------------------------------------------------------------------- q3

def moved(layer, weight_decay, set_to_none=False, momentum=0.0):
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    layer(torch.randn(16, 8)).pow(2).mean().backward()
    layer.weight.requires_grad_(False)
    optimizer.zero_grad(set_to_none=set_to_none)
    before = layer.weight.detach().clone()
    optimizer.step()
    return (layer.weight - before).norm().item()


def test_q3_right():
    feedback = nb04.q3(frozen_weight_moved=moved)
    assert feedback and "0.0000 under plain SGD" in feedback.message


@pytest.mark.parametrize("answer, says", [
    (lambda layer, wd: moved(layer, wd, set_to_none=True), "set to None"),
    (lambda layer, wd: (layer.weight.requires_grad_(False), 0.0)[1], "weight did not move"),
    (lambda layer, wd: (moved(layer, wd), layer.weight.requires_grad_(True))[0], "still requires a gradient"),
    (lambda layer, wd: "far", "return a float"),
    (lambda layer, wd: 1 / 0, "ZeroDivisionError"),
])
def test_q3_wrong_answers(answer, says):
    feedback = nb04.q3(frozen_weight_moved=answer)
    assert not feedback and says in str(feedback)


def test_q3_placeholder_then_right_and_verify():
    def scaffold(layer, weight_decay):
        ...

    assert not nb04.q1(freeze_and_replace=...)
    assert not nb04.q2(fit_with_patience=..., train_features=TRAIN, val_features=VAL)
    assert "returned None" in str(nb04.q3(frozen_weight_moved=scaffold))
    assert nb04.q1(freeze_and_replace=freeze_and_replace)
    assert nb04.q2(fit_with_patience=make(), train_features=TRAIN, val_features=VAL)
    assert nb04.q3(frozen_weight_moved=moved)
    assert "every exercise" in exercises.verify("nb04")
