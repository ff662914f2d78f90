"""Choices on validation: the learning-rate grid that grows past a winning edge, and the contest of several methods (see :mod:`tlhelpers.protocol`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from tlhelpers.checks import integer
from tlhelpers.protocol import runs
from tlhelpers.protocol.budget import (
    MIN_RATES,
    NO_RATE_IMPROVED,
    Budget,
    Run,
    _log_spaced,
    _rates,
)
from tlhelpers.protocol.splits import Splits
from tlhelpers.runtime import seed_everything


def grid_search(build: Callable[[], tuple[nn.Module, Iterable]], train_set: Dataset, val_set: Dataset,
                budget: Budget, *, seed: int = 0, **train_kwargs) -> dict[float, tuple[nn.Module, Run]]:
    """Train one contender at every rate of ``budget.lrs``, growing the grid past a winning edge:
    ``{lr: (model, Run)}`` for every rate tried, largest first (what :func:`choose` picks from).

    ``build()`` returns a fresh ``(model, params)``; it is called after seeding with ``seed``
    for every rate, so each rate starts from the same weights. When the best rate is the largest
    or the smallest tried, the next rate past that edge (the grid's own ratio) is tried too, up to
    ``budget.max_extend`` rates per side. When no rate improved on the start (every run kept
    step 0, as happens from trained weights whose first steps only lose), the grid grows downward
    only, up to ``budget.max_extend`` smaller rates, since smaller steps are the one direction that
    might still improve a good start; if none does, a note says so (:data:`NO_RATE_IMPROVED`).
    """
    if len(budget.lrs) < MIN_RATES:
        raise ValueError(f"choose needs a grid of at least {MIN_RATES} log-spaced rates, got {budget.lrs!r}: "
                         "with two, every choice sits on an edge and no one can tell whether the best rate "
                         "lies inside the grid (for example lrs=(1e-2, 1e-3, 1e-4))")
    ratio = _log_spaced(budget.lrs)
    results: dict[float, tuple[nn.Module, Run]] = {}

    def attempt(lr: float) -> None:
        seed_everything(seed)
        model, params = build()
        results[lr] = (model, runs.train(model, params, train_set, val_set, budget, lr, seed=seed, **train_kwargs))

    for lr in sorted(budget.lrs, reverse=True):
        attempt(lr)
    grown = {"up": 0, "down": 0}
    while True:
        if _none_improved(results):
            if grown["down"] < budget.max_extend:   # from a good start, only smaller steps might still help
                grown["down"] += 1
                attempt(min(results) / ratio)
                continue
            print(f"note: {NO_RATE_IMPROVED}: every rate of {_rates(results)} kept step 0 (validation "
                  f"{max(run.val_acc for _, run in results.values()):.1%} at the start), the grid grown "
                  f"{grown['down']} step(s) down, so the starting weights are kept. From trained weights (a "
                  "stage 2) that is a result; from scratch, check the data, the loss and the trainable parameters.")
            break
        lr = _best_rate(results)
        if lr == max(results) and grown["up"] < budget.max_extend:
            grown["up"] += 1
            attempt(max(results) * ratio)
        elif lr == min(results) and grown["down"] < budget.max_extend:
            grown["down"] += 1
            attempt(min(results) / ratio)
        else:
            break
    return {lr: results[lr] for lr in sorted(results, reverse=True)}


def _best_rate(results: Mapping[float, tuple[nn.Module, Run]]) -> float:
    """The rate with the best validation accuracy; a tie keeps the larger rate."""
    return max(sorted(results, reverse=True), key=lambda lr: results[lr][1].val_acc)


def _none_improved(results: Mapping[float, tuple[nn.Module, Run]]) -> bool:
    """Every rate kept step 0: no run improved on the starting weights."""
    return all(run.best_step == 0 for _, run in results.values())


def best_of(results: Mapping[float, tuple[nn.Module, Run]]) -> tuple[nn.Module, Run]:
    """The (model, Run) of :func:`grid_search` with the best validation accuracy, its Run holding
    every rate tried (``tried``) and whether the choice sits at the edge of that grid (``at_bound``).

    When every rate kept step 0, the Run says so (``no_rate_improved``) instead of ``at_bound``: the
    choice is a tie of untrained starts, not a rate at an edge."""
    lr = _best_rate(results)
    model, run = results[lr]
    run.tried = {rate: results[rate][1].val_acc for rate in sorted(results, reverse=True)}
    run.no_rate_improved = _none_improved(results)
    run.at_bound = lr in (max(results), min(results)) and not run.no_rate_improved
    return model, run


def choose(build: Callable[[], tuple[nn.Module, Iterable]], train_set: Dataset, val_set: Dataset,
           budget: Budget, *, seed: int = 0, **train_kwargs) -> tuple[nn.Module, Run]:
    """Train one contender at every rate of ``budget.lrs``, growing the grid past a winning edge;
    keep the best on validation (:func:`grid_search`, then :func:`best_of`).

    A choice still at the edge once the grid may grow no more is marked ``Run.at_bound``. Ties go
    to the larger rate. When no rate improved on the start (every run kept step 0), the grid
    grows downward only; if still none improved, it prints a note and marks
    ``Run.no_rate_improved`` (the kept weights are the starting ones). Returns the chosen model and its :class:`Run`, whose ``tried`` maps every
    rate tried to its validation accuracy.
    """
    return best_of(grid_search(build, train_set, val_set, budget, seed=seed, **train_kwargs))


class Contested(tuple):
    """What :func:`contest` returns per contender: the pair ``(run, scores)``, so
    ``run, scores = results[name]`` and ``result.add(*results[name])`` work, and also the chosen
    model, ``.model`` (its weights those of the kept check), with ``.run`` and ``.scores``."""

    model: nn.Module

    def __new__(cls, run: Run, scores: np.ndarray, model: nn.Module) -> Contested:
        pair = super().__new__(cls, (run, scores))
        pair.model = model
        return pair

    @property
    def run(self) -> Run:
        return self[0]

    @property
    def scores(self) -> np.ndarray:
        return self[1]

    def __reduce__(self):
        return (Contested, (self[0], self[1], self.model))


def contest(contenders: Mapping[str, Callable[[], tuple[nn.Module, Iterable]]], splits: Splits | None = None,
            budget: Budget | None = None, *, seed: int = 0, train_set: Dataset | None = None,
            val_set: Dataset | None = None, test_set: Dataset | None = None, max_doublings: int = 0,
            **train_kwargs) -> dict[str, Contested]:
    """One seed of a comparison: :func:`choose` every contender on train/validation, then score
    each chosen model once on test. Returns ``{name: (run, per-image test scores)}`` (see :func:`scores`);
    each pair is a :class:`Contested` that also carries the chosen model: ``results[name].model``.

    The splits come from ``splits`` or from ``train_set`` / ``val_set`` / ``test_set`` (for
    cached features). Every choice is made before the first test image is read. When a chosen
    run has not converged (:attr:`Run.converged`), the cap is doubled **for every contender**
    (the budget stays the same for all) and all are chosen again, up to ``max_doublings`` times;
    what is still unconverged then is marked so in its :class:`Run` and the tables.
    """
    if splits is not None:
        train_set, val_set, test_set = splits.train, splits.val, splits.test
    if train_set is None or val_set is None or test_set is None:
        raise ValueError("contest needs splits=, or train_set=, val_set= and test_set=")
    integer(max_doublings, "max_doublings", 0)
    budget = budget or Budget()
    for doubling in range(max_doublings + 1):
        chosen = {name: choose(build, train_set, val_set, budget, seed=seed, **train_kwargs)
                  for name, build in contenders.items()}
        if all(run.converged for _, run in chosen.values()) or doubling == max_doublings:
            break
        budget = budget.doubled()
    return {name: Contested(run, runs.scores(model, test_set), model) for name, (model, run) in chosen.items()}
