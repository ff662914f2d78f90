"""One run under a budget: the training loop every comparison uses, and how a model is scored (see :mod:`tlhelpers.protocol`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tlhelpers.evaluation import accuracy, predict
from tlhelpers.freezing import batchnorm_layers, set_bn_policy
from tlhelpers.protocol.budget import (
    Budget,
    Run,
)
from tlhelpers.protocol.splits import as_tensors
from tlhelpers.robust import reestimate_batchnorm
from tlhelpers.runtime import model_device
from tlhelpers.training import build_optimizer, train_step

#: Batch size for recomputing BatchNorm statistics (``train(recompute_bn=True)``): large enough that
#: the averaged per-batch variances are close to the exact one, small enough for any laptop.
RECOMPUTE_BATCH = 250


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Indices for batches of exactly ``batch_size`` (or ``n`` if smaller): consecutive shuffled epochs."""
    size = min(batch_size, n)
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < size:
            pending = torch.cat([pending, torch.randperm(n, generator=generator)])
        yield pending[:size]
        pending = pending[size:]


def _optimizer(params: Iterable | Callable[[float], Iterable], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over ``params`` (:func:`tlhelpers.training.build_optimizer`).

    ``params`` is parameters, param groups, or a function of the run's rate returning them: the
    plain-PyTorch way to give groups rates that move together over a grid, each group with its own
    ``lr`` as ``torch.optim`` reads it (``lambda lr: [{"params": head, "lr": lr}, {"params": blocks,
    "lr": lr / 10}]``). In a list of groups, a group's ``lr_scale`` multiplies ``lr`` (the older,
    helper-only spelling: a plain optimizer ignores that key).
    """
    if callable(params):
        return build_optimizer(list(params(lr)), "adamw", lr, weight_decay=weight_decay)
    groups = list(params)
    if groups and isinstance(groups[0], dict):
        groups = [{**{k: v for k, v in g.items() if k != "lr_scale"}, "lr": lr * float(g.get("lr_scale", 1.0))}
                  for g in groups]
    return build_optimizer(groups, "adamw", lr, weight_decay=weight_decay)


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Accuracy of ``model`` on ``dataset`` under eval() + inference_mode (BatchNorm, Dropout off)."""
    return accuracy(model, DataLoader(dataset, batch_size=batch_size))


def scores(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> np.ndarray:
    """Per-image scores of ``model`` on ``dataset``, in the dataset's order: 1.0 correct, 0.0 wrong.

    Their mean is :func:`evaluate`'s accuracy; kept per image, two methods scored on the same
    split can be compared image by image (:func:`tlhelpers.compare.paired`).
    """
    predictions = predict(model, DataLoader(dataset, batch_size=batch_size))
    return (predictions.logits.argmax(dim=1) == predictions.targets).double().numpy()


def train(model: nn.Module, params: Iterable | Callable[[float], Iterable], train_set: Dataset, val_set: Dataset, budget: Budget,
          lr: float, *, seed: int = 0, loss_fn: Callable | None = None,
          bn_policy: str = "frozen-eval", recompute_bn: bool = False, restore_best: bool = True) -> Run:
    """Train ``params`` of ``model`` under ``budget`` at learning rate ``lr``; keep the best validation check.

    ``params`` are parameters, param groups, or a function of ``lr`` returning them (each group with
    its own ``"lr"``, as plain ``torch.optim`` reads it: discriminative rates that move with the grid;
    see :func:`_optimizer`). Batches are drawn from consecutive shuffled passes over
    ``train_set`` with ``seed``. The rate follows ``budget.schedule``: cosine decay over the cap
    with equal steps, constant with early stopping. ``model`` ends with the weights of its best
    check. The test split is not an argument: no choice here can read it. ``bn_policy`` is applied
    after every ``model.train()`` (see :func:`tlhelpers.freezing.set_bn_policy`): with the
    default ``"frozen-eval"`` a BatchNorm layer whose scale or shift trains is in train mode and
    moves its running statistics; pass ``"eval"`` to keep every layer's statistics fixed.

    ``recompute_bn=True`` recomputes every BatchNorm layer's running statistics on the training
    inputs before each validation check (:func:`tlhelpers.robust.reestimate_batchnorm`, the idea
    of ``torch.optim.swa_utils.update_bn``), so the kept weights carry statistics that match them.
    A network trained from random weights needs it: its weights move faster than the running
    averages (momentum 0.1) follow, and in ``eval()`` it is scored with statistics of weights it
    no longer has (notebook 05 measures the difference). Training itself is unchanged: in
    ``train()`` BatchNorm normalises with each batch's own statistics.

    ``restore_best=False`` leaves the weights of the last step in ``model`` (the returned
    :class:`Run` still names the best check): for measuring what the steps themselves did, such as
    how far the weights moved in a fixed number of steps, not for choosing a model.
    """
    lr = float(lr)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    device = model_device(model)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    data = train_set if isinstance(train_set, TensorDataset) else as_tensors(train_set)
    n = len(data)
    if n == 0:
        raise ValueError("the training split is empty")
    if recompute_bn and not batchnorm_layers(model):
        raise ValueError(f"recompute_bn=True but {type(model).__name__} has no BatchNorm layer with running "
                         "statistics: leave it False")
    optimizer = _optimizer(params, lr, budget.weight_decay)
    cap = budget.max_steps
    if budget.patience is None:
        factor = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, cap) / cap))  # noqa: E731
    else:
        factor = lambda step: 1.0  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(seed)
    batches = _batches(n, budget.batch_size, generator)

    def check(step: int) -> float:
        if recompute_bn:
            reestimate_batchnorm(model, data.tensors[0], batch_size=RECOMPUTE_BATCH)
        value = evaluate(model, val_set)
        curve.append((step, value))
        return value

    curve: list[tuple[int, float]] = []
    best_acc, best_step = check(0), 0
    best_state = copy.deepcopy(model.state_dict())
    since, stopped, step = 0, False, 0
    for step in range(1, cap + 1):
        model.train()
        set_bn_policy(model, bn_policy)
        rows = next(batches)
        inputs, labels = data.tensors[0][rows].to(device), data.tensors[1][rows].to(device)
        train_step(model, inputs, labels, optimizer, loss_fn)
        schedule.step()
        if step % budget.eval_every == 0 or step == cap:
            value = check(step)
            if value > best_acc:
                best_acc, best_step, since = value, step, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since += 1
                if budget.patience is not None and since >= budget.patience:
                    stopped = True
                    break
    if restore_best:
        model.load_state_dict(best_state)
    model.eval()
    return Run(lr=lr, steps=step, best_step=best_step, val_acc=best_acc, curve=curve, train_size=n,
               batch_size=min(budget.batch_size, n), stopped_early=stopped, max_steps=cap)
