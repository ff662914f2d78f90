"""Notebook 06's exercise checks: the untouched scaffold, wrong answers and crashes say "Not yet" with
a hint (never a traceback); the answer-key functions say "Right"."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlhelpers import exercises
from tlhelpers.exercises import nb06


@pytest.fixture(autouse=True)
def fresh_history():
    exercises.HISTORY.clear()
    yield
    exercises.HISTORY.clear()


def mc_dropout(model, image, runs=10):
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    with torch.inference_mode():
        probabilities = torch.cat([model(image).softmax(dim=1) for _ in range(runs)])
    model.eval()
    return probabilities


def predict_top1(model, images):
    modes = {name: module.training for name, module in model.named_modules()}
    model.eval()
    try:
        with torch.inference_mode():
            return model(images).argmax(dim=1)
    finally:
        for name, module in model.named_modules():
            module.training = modes[name]


def scaffold(*args):
    ...


def test_placeholders_and_untouched_scaffolds_say_not_yet():
    for check, name in ((nb06.q1, "mc_dropout"), (nb06.q2, "predict_top1")):
        feedback = check(**{name: ...})
        assert not feedback and "still `...`" in str(feedback) and "Hint:" in str(feedback)
        feedback = check(**{name: scaffold})
        assert not feedback and "returned None" in feedback.message


def everything_in_train(model, image, runs=10):
    model.train()
    with torch.inference_mode():
        return torch.cat([model(torch.cat([image, image])).softmax(dim=1)[:1] for _ in range(runs)])


def dropout_off(model, image, runs=10):
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(image).softmax(dim=1) for _ in range(runs)])


def with_graph(model, image, runs=10):
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    probabilities = torch.cat([model(image).softmax(dim=1) for _ in range(runs)])
    model.eval()
    return probabilities.detach()


def left_in_dropout_mode(model, image, runs=10):
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    with torch.inference_mode():
        return torch.cat([model(image).softmax(dim=1) for _ in range(runs)])


def logits_not_probabilities(model, image, runs=10):
    return mc_dropout(model, image, runs).log()


@pytest.mark.parametrize("answer, says", [
    (everything_in_train, "running statistics moved"),
    (dropout_off, "same probabilities"),
    (with_graph, "inference_mode"),
    (left_in_dropout_mode, "back in eval mode"),
    (logits_not_probabilities, "softmax"),
    (lambda model, image, runs=10: mc_dropout(model, image, 3), "shape"),
    (lambda model, image, runs=10: model(image, 1), "TypeError"),
])
def test_q1_wrong_answers_say_what_is_wrong(answer, says):
    feedback = nb06.q1(mc_dropout=answer)
    assert not feedback and says in feedback.message and "Hint:" in str(feedback)


def forgets_the_modes(model, images):
    model.eval()
    with torch.inference_mode():
        predictions = model(images).argmax(dim=1)
    model.train()
    return predictions


def train_mode_predictions(model, images):
    model.train()
    with torch.no_grad():
        return model(images).argmax(dim=1)


def as_it_comes(model, images):
    with torch.no_grad():
        return model(images).argmax(dim=1)


def records_a_graph(model, images):
    modes = {name: module.training for name, module in model.named_modules()}
    model.eval()
    predictions = model(images).argmax(dim=1)
    for name, module in model.named_modules():
        module.training = modes[name]
    return predictions


def probabilities_not_classes(model, images):
    modes = {name: module.training for name, module in model.named_modules()}
    model.eval()
    with torch.inference_mode():
        out = model(images).softmax(dim=1)
    for name, module in model.named_modules():
        module.training = modes[name]
    return out


@pytest.mark.parametrize("answer, says", [
    (forgets_the_modes, "other modes"),
    (train_mode_predictions, "running statistics moved"),
    (as_it_comes, "different answers"),
    (records_a_graph, "inference_mode"),
    (probabilities_not_classes, "one top-1 class index per image"),
    (lambda model, images: "cat", "return the class indices"),
])
def test_q2_wrong_answers_say_what_is_wrong(answer, says):
    feedback = nb06.q2(predict_top1=answer)
    assert not feedback and says in feedback.message and "Hint:" in str(feedback)


def test_right_answers_and_verify():
    assert not nb06.q1(mc_dropout=scaffold) and not nb06.q2(predict_top1=scaffold)
    first, second = nb06.q1(mc_dropout=mc_dropout), nb06.q2(predict_top1=predict_top1)
    assert first and str(first).startswith("Right.") and second and str(second).startswith("Right.")
    assert "every exercise" in exercises.verify("nb06")


def test_the_checks_do_not_touch_the_global_random_state():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    nb06.q1(mc_dropout=scaffold)
    nb06.q2(predict_top1=scaffold)
    assert torch.equal(torch.rand(3), expected)
