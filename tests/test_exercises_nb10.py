"""Notebook 10's exercise checks: the untouched scaffold, wrong answers and crashes say "Not yet" with
a hint (never a traceback); the answer-key functions say "Right"."""

from __future__ import annotations

import math

import pytest
import torch

from tlhelpers import exercises
from tlhelpers.exercises import nb10


@pytest.fixture(autouse=True)
def fresh_history():
    exercises.HISTORY.clear()
    yield
    exercises.HISTORY.clear()


def export_for_serving(model, example):
    was_training = model.training
    model.eval()
    try:
        return torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    finally:
        model.train(was_training)


def rank_indices(n, world, rank, seed, epoch):
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    total = math.ceil(n / world) * world
    while len(order) < total:
        order += order[:total - len(order)]
    return order[rank:total:world]


def scaffold(*args):
    ...


def test_placeholders_and_untouched_scaffolds_say_not_yet():
    for check, name in ((nb10.q1, "export_for_serving"), (nb10.q2, "rank_indices"), (nb10.q3, "graphs_per_call")):
        feedback = check(**{name: ...})
        assert not feedback and "still `...`" in str(feedback) and "Hint:" in str(feedback)
        feedback = check(**{name: scaffold})
        assert not feedback and "returned None" in feedback.message


def fixed_batch(model, example):
    was_training = model.training
    model.eval()
    program = torch.export.export(model, (example,))
    model.train(was_training)
    return program


def in_train_mode(model, example):
    return torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})


def left_in_eval(model, example):
    return torch.export.export(model.eval(), (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})


@pytest.mark.parametrize("answer, says", [
    (fixed_batch, "refused a batch of 5"),
    (in_train_mode, "train mode"),
    (left_in_eval, "came back in eval mode"),
    (lambda model, example: model, "return what torch.export.export returns"),
])
def test_q1_wrong_answers_say_what_is_wrong(answer, says):
    feedback = nb10.q1(export_for_serving=answer)
    assert not feedback and says in feedback.message and "Hint:" in str(feedback)


def no_padding(n, world, rank, seed, epoch):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order[rank::world]


@pytest.mark.parametrize("answer, says", [
    (no_padding, "padded"),
    (lambda n, world, rank, seed, epoch: rank_indices(n, world, rank, seed, 0), "other indices"),
    (lambda n, world, rank, seed, epoch: list(reversed(rank_indices(n, world, rank, seed, epoch))), "another order"),
    (lambda n, world, rank, seed, epoch: list(range(rank, n, world)), "other indices"),
    (lambda n, world, rank, seed, epoch: "0 2 4", "integer indices"),
    (lambda n, world, rank, seed, epoch: 1 / 0, "ZeroDivisionError"),
])
def test_q2_wrong_answers_say_what_is_wrong(answer, says):
    feedback = nb10.q2(rank_indices=answer)
    assert not feedback and says in feedback.message and "Hint:" in str(feedback)


def graphs_per_call(net, batches, dynamic=None):
    torch.compiler.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = torch.compile(net, backend="aot_eager", dynamic=dynamic)
    made = []
    with torch.no_grad():
        for batch in batches:
            compiled(batch)
            made.append(counters["stats"]["unique_graphs"])
    return made


def no_reset(net, batches, dynamic=None):
    compiled = torch.compile(net, backend="aot_eager", dynamic=dynamic)
    counters = torch._dynamo.utils.counters
    with torch.no_grad():
        return [compiled(batch) is None or counters["stats"]["unique_graphs"] + 100 for batch in batches]


def ignores_dynamic(net, batches, dynamic=None):
    return graphs_per_call(net, batches, dynamic=None)


def eager(net, batches, dynamic=None):
    return [1 for _ in batches]


@pytest.mark.parametrize("answer, says", [
    (no_reset, "fresh compiler"),
    (ignores_dynamic, "counts differ"),
    (eager, "counts differ"),
    (lambda net, batches, dynamic=None: [1], "counts for 3 calls"),
])
def test_q3_wrong_answers_say_what_is_wrong(answer, says):
    feedback = nb10.q3(graphs_per_call=answer)
    assert not feedback and says in feedback.message and "Hint:" in str(feedback)


def test_right_answers_and_verify():
    assert not nb10.q1(export_for_serving=scaffold) and not nb10.q2(rank_indices=scaffold)
    assert not nb10.q3(graphs_per_call=scaffold)
    first, second = nb10.q1(export_for_serving=export_for_serving), nb10.q2(rank_indices=rank_indices)
    third = nb10.q3(graphs_per_call=graphs_per_call)
    assert all(f and str(f).startswith("Right.") for f in (first, second, third)), (first, second, third)
    assert "every exercise" in exercises.verify("nb10")
