"""Fair comparisons: three splits, one budget for every contender, every choice on validation.

A verdict such as "fine-tuning beat the linear probe" measures the methods only when nothing
else differs: not the number of steps, not the learning rate, not the images that chose the
best epoch. The course's comparison notebooks (04, 05, 07, 08, 09) and the command line follow
one protocol, and this module is where it lives:

1. **Three splits** (:func:`three_splits`). *train* fits the weights; *validation* makes every
   choice (learning rate, best step, early stop, a mixing weight, which method to keep); *test*
   is scored once per final model and never used for a choice. Train and validation are drawn
   disjointly from the dataset's training files; test is the dataset's held-out split.
2. **One budget** (:class:`Budget`). Every contender gets the same cap of optimizer steps with
   the same optimizer (AdamW) and batches of the same size. Two ways to spend it, and the
   schedule always runs its full course:

   * ``patience=None``: **equal steps**. Every contender takes all ``max_steps``, with cosine
     decay of the rate to zero over exactly those steps.
   * ``patience=p``: **its own early stop under the same cap**. Each contender stops when
     validation has not improved for ``p`` checks, at a **constant** rate. A decay over the cap
     would be cut off wherever the stop happens to fall (a run stopping at a third of its cap
     would have seen its rate barely start to fall), so the kept weights would depend on a
     schedule nobody chose; with a constant rate every run has had the whole of its schedule
     whenever it stops, and a run that stopped early is the same run under any larger cap.

   Either way the weights of the best validation check are the ones kept.
3. **Converged, or marked as not** (:attr:`Run.converged`). A run has converged when its best
   validation check is not in the **last quarter of its cap** (``LAST_FRACTION``): it was no
   longer improving when the steps ran out. :func:`contest` can double the cap for every
   contender (``max_doublings``) until each has converged, and :func:`table` refuses a verdict
   between a converged and an unconverged contender ("not comparable: X still improving at its
   cap"): a method that ran out of steps has not been measured, only its budget has.
4. **A learning-rate grid that contains its choice** (:func:`choose`). ``Budget.lrs`` holds at
   least three log-spaced rates; every contender trains once per rate from the same start and
   keeps the best on validation. When the best is at an edge of the grid, the grid grows one
   step past that edge (same spacing) and the new rate is tried, up to ``Budget.max_extend``
   steps per side; :attr:`Run.grid` is the final grid and :attr:`Run.at_bound` marks a choice
   still at its edge. When **no rate improved on the start** (every run kept step 0, the
   starting weights), the grid does not grow: a tie of nothing-learned runs says nothing about
   where a better rate lies, and stepping past the larger edge would only try rates more likely
   to diverge. :func:`choose` stops, prints a note, and marks :attr:`Run.no_rate_improved`
   (:func:`table` marks it ``!``); the starting weights are what such a contender is.
   The rate is chosen **per seed on that seed's validation split**, not once
   on a tuning seed: each seed then repeats the whole procedure a learner would follow (split,
   choose, train, score), so the spread over seeds, and the paired interval built on it, includes
   the noise of the choice itself, which a rate fixed once would hide.
5. **Tables that show it** (:func:`table`): per method the final grid and the rates chosen,
   steps kept and taken, epochs, converged on how many seeds, validation and test accuracy, and
   each contender's paired interval against a named baseline (:mod:`tlhelpers.compare`), with
   the gap this run could have detected. :func:`paired_against` returns those intervals as
   :class:`tlhelpers.compare.Paired` objects (``.verdict``, ``.mean``, ``.low``, ``.high``) for a
   notebook that acts on them; :func:`compared` words them (each value a string that also carries them).

Training a head on cached features (``training.cache_features``) and training through the
network use the same :func:`train`, so a probe and a fine-tuned network are judged alike.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, default_collate

from tlhelpers import compare
from tlhelpers.checks import integer
from tlhelpers.data import DatasetError, FewShot, load_dataset
from tlhelpers.evaluation import accuracy, predict
from tlhelpers.freezing import batchnorm_layers, set_bn_policy
from tlhelpers.robust import reestimate_batchnorm
from tlhelpers.runtime import model_device, seed_everything
from tlhelpers.training import build_optimizer, train_step

#: Batch size for recomputing BatchNorm statistics (``train(recompute_bn=True)``): large enough that
#: the averaged per-batch variances are close to the exact one, small enough for any laptop.
RECOMPUTE_BATCH = 250

SPLIT_NAMES = ("train", "validation", "test")


# --------------------------------------------------------------------------- splits

def _positive_int(value, what: str) -> int:
    return integer(value, what, 1)


@dataclass(frozen=True)
class Splits:
    """The three splits of one seed. ``train_order`` lists, per class, the training indices in
    their seeded order, so :meth:`first` gives nested subsets (the 5 per class are among the 20)."""

    train: Dataset
    val: Dataset
    test: Dataset
    classes: tuple[str, ...]
    train_order: tuple[tuple[int, ...], ...] = field(repr=False)

    def first(self, per_class: int) -> list[int]:
        """Positions in :attr:`train` of the first ``per_class`` images of each class (nested in k)."""
        per_class = _positive_int(per_class, "per_class")
        smallest = min(len(order) for order in self.train_order)
        if per_class > smallest:
            raise DatasetError(f"the training split has only {smallest} images in its smallest class; "
                             f"per_class={per_class} is too many")
        return sorted(i for order in self.train_order for i in order[:per_class])

    def describe(self) -> str:
        """One line: how many images each split holds and where it comes from."""
        def per(ds: Dataset) -> str:
            counts = np.bincount(np.asarray(targets_of(ds)), minlength=len(self.classes))
            each = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"
            return f"{each}/class ({len(ds)} images)"
        return (f"train {per(self.train)} and validation {per(self.val)}, disjoint, from the training "
                f"files; test {per(self.test)} from the held-out files, used for no choice")


def targets_of(dataset: Dataset) -> list[int]:
    """The labels of a dataset with ``targets``, a ``TensorDataset`` (labels last) or a Subset of them."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1].tolist()
    if hasattr(dataset, "targets"):
        return [int(t) for t in dataset.targets]
    if isinstance(dataset, Subset):
        inner = targets_of(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    raise TypeError(f"cannot read the labels of a {type(dataset).__name__}: give it a targets list")


def three_splits(name: str, per_class: int | None, *, val_per_class: int | None = None,
                 test_per_class: int | None = None, seed: int = 0, transform: Callable | None = None,
                 root: str | Path | None = None, at_most: bool = False) -> Splits:
    """Seeded train / validation / test splits of dataset ``name`` (see :func:`tlhelpers.data.load_dataset`).

    Each class's training files are shuffled with ``seed``: the first ``per_class`` go to train,
    the next ``val_per_class`` (default: as many) to validation, so the two never share an
    image. ``per_class=None`` puts every file that validation does not take into train (then
    ``val_per_class`` is required). Test takes ``test_per_class`` (default: as many as
    validation) of the held-out split.
    A class with too few training files is an error naming it, unless ``at_most=True``: then the
    class's files are shared out in the same proportion (at least one each) and a note says so.
    """
    if per_class is None and val_per_class is None:
        raise ValueError("per_class=None (all the rest for training) needs val_per_class")
    per_class = None if per_class is None else _positive_int(per_class, "per_class")
    val_per_class = _positive_int(val_per_class if val_per_class is not None else per_class, "val_per_class")
    test_per_class = _positive_int(test_per_class if test_per_class is not None else val_per_class,
                                   "test_per_class")
    full = load_dataset(name, "train", transform=transform, root=root)
    targets = torch.as_tensor(targets_of(full))
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx, order = [], [], []
    for label in range(len(full.classes)):
        members = torch.nonzero(targets == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)].tolist()
        n_train = per_class if per_class is not None else len(members) - val_per_class
        n_val = val_per_class
        wanted = (per_class or 1) + val_per_class
        if len(members) < wanted:
            if not at_most or len(members) < 2:
                raise DatasetError(
                    f"{name}: class {full.classes[label]!r} has {len(members)} training files; train "
                    f"{per_class or 'at least 1'} + validation {val_per_class} per class need {wanted}. Ask for "
                    "fewer, add images, or pass at_most=True to share out what there is.")
            n_val = max(1, round(len(members) * val_per_class / wanted))
            n_train = len(members) - n_val
            print(f"note: {name}: class {full.classes[label]!r} has {len(members)} training files: "
                  f"{n_train} for train, {n_val} for validation")
        train_idx += members[:n_train]
        val_idx += members[n_train:n_train + n_val]
        order.append(members[:n_train])
    train_sorted = sorted(train_idx)
    position = {index: i for i, index in enumerate(train_sorted)}
    test = load_dataset(name, "val", per_class=test_per_class, seed=seed, transform=transform, root=root,
                        at_most=at_most)
    return Splits(train=FewShot(full, train_sorted), val=FewShot(full, sorted(val_idx)), test=test,
                  classes=tuple(full.classes),
                  train_order=tuple(tuple(position[i] for i in members) for members in order))


def as_tensors(dataset: Dataset, rows: Sequence[int] | None = None) -> TensorDataset:
    """A dataset (or the ``rows`` of it) as one ``TensorDataset`` of (inputs, labels): load once, index fast."""
    rows = range(len(dataset)) if rows is None else rows
    if isinstance(dataset, TensorDataset):
        index = torch.as_tensor(list(rows), dtype=torch.long)
        return TensorDataset(*(t[index] for t in dataset.tensors))
    inputs, labels = default_collate([dataset[i] for i in rows])
    return TensorDataset(inputs, torch.as_tensor(labels))


# --------------------------------------------------------------------------- budget and runs

#: A run has converged when its best validation check is not in the last quarter of its cap.
LAST_FRACTION = 0.25
#: Every grid :func:`choose` takes has at least this many rates.
MIN_RATES = 3
#: Why :func:`choose` stopped without growing the grid when every rate kept the starting weights.
NO_RATE_IMPROVED = "no rate improved on the start"


def _log_spaced(lrs: tuple[float, ...]) -> float:
    """The common ratio of a log-spaced grid (largest first); ValueError when it is not log-spaced."""
    ordered = sorted(lrs, reverse=True)
    ratios = [ordered[i] / ordered[i + 1] for i in range(len(ordered) - 1)]
    if not ratios:
        return 10.0
    if min(ratios) <= 1 or max(ratios) / min(ratios) > 1.01:
        raise ValueError(f"the learning-rate grid {lrs!r} must be log-spaced with distinct rates "
                         "(the same ratio between neighbours, for example (1e-2, 1e-3, 1e-4))")
    return ratios[0]


@dataclass(frozen=True)
class Budget:
    """What every contender in one comparison gets.

    ``max_steps`` optimizer steps at most (the cap), batches of ``batch_size``, AdamW with
    ``weight_decay``, a validation check every ``eval_every`` steps (and before the first).
    ``patience=None``: every contender takes all ``max_steps`` with cosine decay over them;
    ``patience=p``: each stops after ``p`` checks without a new best, at a constant rate (see
    the module docstring for why). ``lrs``: the log-spaced grid :func:`choose` starts from (at
    least three rates for a choice; one rate is fine for a single :func:`train`), which may grow
    ``max_extend`` steps past either edge.
    """

    max_steps: int = 120
    batch_size: int = 32
    lrs: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    eval_every: int = 10
    patience: int | None = 4
    weight_decay: float = 0.01
    max_extend: int = 2

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "eval_every"):
            _positive_int(getattr(self, name), name)
        if self.patience is not None:
            _positive_int(self.patience, "patience (or None for equal steps)")
        integer(self.max_extend, "max_extend", 0)
        lrs = tuple(self.lrs)
        if not lrs or any(isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 for lr in lrs):
            raise ValueError(f"lrs must be a non-empty sequence of positive learning rates, got {self.lrs!r}")
        object.__setattr__(self, "lrs", tuple(float(lr) for lr in lrs))
        _log_spaced(self.lrs)
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")

    @property
    def schedule(self) -> str:
        return "cosine decay over the cap" if self.patience is None else "constant rate (early stopping)"

    def doubled(self) -> Budget:
        """The same budget with twice the cap (what :func:`contest` offers an unconverged contender)."""
        return Budget(self.max_steps * 2, self.batch_size, self.lrs, self.eval_every, self.patience,
                      self.weight_decay, self.max_extend)

    def describe(self) -> str:
        stop = ("every contender takes all of them (equal steps), cosine decay of the rate to zero over them"
                if self.patience is None else
                f"each stops after {self.patience} validation checks without a new best (every "
                f"{self.eval_every} steps), at a constant rate, keeping its best check")
        if len(self.lrs) == 1:
            rates = f"learning rate {self.lrs[0]:g}"
        else:
            rates = ("learning rate chosen per seed on validation from {" + ", ".join(f"{lr:g}" for lr in self.lrs)
                     + f"}}, extended up to {self.max_extend} step(s) past an edge that wins")
        return (f"at most {self.max_steps} AdamW steps of {self.batch_size} images, weight decay "
                f"{self.weight_decay:g}; {stop}; {rates}; converged = best check not in the last "
                f"{LAST_FRACTION:.0%} of the cap")


@dataclass
class Run:
    """One training run under a :class:`Budget`: what it took and what validation said."""

    lr: float
    steps: int                 # optimizer steps taken (up to the stop)
    best_step: int             # the step whose weights were kept (0: the starting weights)
    val_acc: float             # validation accuracy at best_step
    curve: list[tuple[int, float]]   # (step, validation accuracy) at every check
    train_size: int
    batch_size: int
    stopped_early: bool
    max_steps: int             # the cap this run had
    tried: dict[float, float] = field(default_factory=dict)   # lr -> best validation accuracy (choose)
    at_bound: bool = False     # choose: the chosen rate is at an edge of the final grid, which could grow no more
    no_rate_improved: bool = False   # choose: every rate kept step 0 (the start); the grid was not grown

    @property
    def epochs(self) -> float:
        """Passes over the training split up to the kept step."""
        return self.best_step * self.batch_size / self.train_size

    @property
    def converged(self) -> bool:
        """The best validation check is not in the last quarter of the cap (``LAST_FRACTION``)."""
        return self.best_step <= self.max_steps * (1 - LAST_FRACTION)

    @property
    def grid(self) -> tuple[float, ...]:
        """Every rate tried, largest first (the final grid of :func:`choose`)."""
        return tuple(sorted(self.tried or {self.lr: self.val_acc}, reverse=True))

    def describe(self) -> str:
        stop = "early stop" if self.stopped_early else "cap"
        state = "converged" if self.converged else "NOT converged: still improving at its cap"
        bound = ", at the grid's bound" if self.at_bound else ""
        if self.no_rate_improved:
            bound = f", {NO_RATE_IMPROVED} (the starting weights kept)"
        return (f"lr {self.lr:g}{bound}, kept step {self.best_step} of {self.steps} ({stop}, cap {self.max_steps}, "
                f"{state}), {self.epochs:.1f} epochs, validation {self.val_acc:.1%}")


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Indices for batches of exactly ``batch_size`` (or ``n`` if smaller): consecutive shuffled epochs."""
    size = min(batch_size, n)
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < size:
            pending = torch.cat([pending, torch.randperm(n, generator=generator)])
        yield pending[:size]
        pending = pending[size:]


def _optimizer(params: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over ``params`` (:func:`tlhelpers.training.build_optimizer`); a param group's
    ``lr_scale`` multiplies ``lr`` for that group, so a grid over ``lr`` moves every group together."""
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


def train(model: nn.Module, params: Iterable, train_set: Dataset, val_set: Dataset, budget: Budget,
          lr: float, *, seed: int = 0, loss_fn: Callable | None = None,
          bn_policy: str = "frozen-eval", recompute_bn: bool = False, restore_best: bool = True) -> Run:
    """Train ``params`` of ``model`` under ``budget`` at learning rate ``lr``; keep the best validation check.

    ``params`` are parameters or param groups (a group's ``"lr_scale"`` multiplies ``lr``, for
    discriminative rates). Batches are drawn from consecutive shuffled passes over
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


def grid_search(build: Callable[[], tuple[nn.Module, Iterable]], train_set: Dataset, val_set: Dataset,
                budget: Budget, *, seed: int = 0, **train_kwargs) -> dict[float, tuple[nn.Module, Run]]:
    """Train one contender at every rate of ``budget.lrs``, growing the grid past a winning edge:
    ``{lr: (model, Run)}`` for every rate tried, largest first (what :func:`choose` picks from).

    ``build()`` returns a fresh ``(model, params)``; it is called after seeding with ``seed``
    for every rate, so each rate starts from the same weights. When the best rate is the largest
    or the smallest tried, the next rate past that edge (the grid's own ratio) is tried too, up to
    ``budget.max_extend`` rates per side. When no rate improved on the start (every run kept
    step 0), the grid is not grown and a note says so (:data:`NO_RATE_IMPROVED`).
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
        results[lr] = (model, train(model, params, train_set, val_set, budget, lr, seed=seed, **train_kwargs))

    for lr in sorted(budget.lrs, reverse=True):
        attempt(lr)
    grown = {"up": 0, "down": 0}
    while True:
        if _none_improved(results):
            print(f"note: {NO_RATE_IMPROVED}: every rate of {_rates(results)} kept step 0 (validation "
                  f"{max(run.val_acc for _, run in results.values()):.1%} at the start); the grid was not "
                  "extended. Check the data, the loss and the trainable parameters before a wider grid.")
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
    to the larger rate. When no rate improved on the start (every run kept step 0), the grid is
    not grown: it prints a note and marks ``Run.no_rate_improved`` (the kept weights are the
    starting ones). Returns the chosen model and its :class:`Run`, whose ``tried`` maps every
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
    return {name: Contested(run, scores(model, test_set), model) for name, (model, run) in chosen.items()}


# --------------------------------------------------------------------------- tables

@dataclass
class Result:
    """One method over seeds: a :class:`Run` (``None`` for a method with no training, such as a
    closed-form baseline) and the per-image test scores of each seed."""

    runs: list[Run | None] = field(default_factory=list)
    test_scores: list[np.ndarray] = field(default_factory=list)

    def add(self, run: Run | None, test_scores) -> None:
        """One seed: its run and its per-image test scores (:func:`scores`; 1.0 correct, 0.0 wrong)."""
        values = np.asarray(test_scores, dtype=float)
        if values.ndim != 1 or values.size == 0:
            raise ValueError("add the per-image test scores of this seed (protocol.scores(model, test_set)), "
                             f"not an accuracy: got shape {values.shape}")
        self.runs.append(run)
        self.test_scores.append(values)

    @property
    def test(self) -> list[float]:
        """Test accuracy per seed."""
        return [float(values.mean()) for values in self.test_scores]

    @property
    def val(self) -> list[float]:
        """Validation accuracy per seed at the kept check (the number that made the choices)."""
        return [run.val_acc for run in self.runs if run is not None]

    @property
    def scores(self) -> np.ndarray:
        """(seeds, test images): what :func:`tlhelpers.compare.paired` takes."""
        return compare.scores_of(self.test_scores)

    @property
    def trained(self) -> list[Run]:
        return [run for run in self.runs if run is not None]

    @property
    def unconverged(self) -> int:
        """On how many seeds the run was still improving at its cap."""
        return sum(not run.converged for run in self.trained)


def _rates(items: Iterable[float]) -> str:
    values = sorted(set(items), reverse=True)
    return "/".join(f"{v:g}" for v in values)


def _grid(runs: Sequence[Run]) -> str:
    rates = sorted({lr for run in runs for lr in run.grid}, reverse=True)
    return f"{rates[0]:g}..{rates[-1]:g} ({len(rates)})" if len(rates) > 1 else f"{rates[0]:g}"


class Compared(str):
    """One line of :func:`compared`: the same words as before (a ``str``: print it, concatenate it,
    ``.startswith("not comparable")``), carrying the comparison behind them.

    ``.paired`` is the :class:`tlhelpers.compare.Paired` (contender - baseline on the table's
    split); ``.mean``, ``.low``, ``.high``, ``.detectable`` and ``.interval()`` are its own.
    ``.comparable`` is False when one of the two was still improving at its cap and the other was
    not; ``.verdict`` is then ``"not comparable"``, else the interval's ``"beat"``, ``"lost"``,
    ``"not separated"`` or ``"one seed"``.
    """

    paired: compare.Paired
    comparable: bool

    def __new__(cls, text: str, paired: compare.Paired, comparable: bool = True) -> Compared:
        line = super().__new__(cls, text)
        line.paired, line.comparable = paired, comparable
        return line

    @property
    def verdict(self) -> str:
        return self.paired.verdict if self.comparable else "not comparable"

    @property
    def mean(self) -> float:
        return self.paired.mean

    @property
    def low(self) -> float:
        return self.paired.low

    @property
    def high(self) -> float:
        return self.paired.high

    @property
    def detectable(self) -> float:
        return self.paired.detectable

    def interval(self) -> str:
        return self.paired.interval()

    def __reduce__(self):
        return (Compared, (str(self), self.paired, self.comparable))


def paired_against(results: Mapping[str, Result], baseline: str, *,
                   unit: str = "test images") -> dict[str, compare.Paired]:
    """Each contender minus ``baseline``: ``{name: Paired}`` (Bonferroni over the contenders;
    :func:`tlhelpers.compare.against`), the intervals :func:`table` and :func:`compared` word.

    For a notebook that acts on a verdict: ``paired_against(results, "probe")["fine-tuning"].low > 0``.
    It does not check convergence; :func:`compared` (``.comparable``) and :func:`table` do.
    """
    if baseline not in results:
        raise ValueError(f"the baseline {baseline!r} is not in the table: choose one of {list(results)}")
    return compare.against(baseline, {name: result.scores for name, result in results.items()}, unit=unit)


def compared(results: Mapping[str, Result], baseline: str, *, unit: str = "test images") -> dict[str, Compared]:
    """Each contender against ``baseline`` in words: its paired interval on test (Bonferroni over
    the contenders; :func:`tlhelpers.compare.against`) and what it could have detected, or "not
    comparable" when one of the two was still improving at its cap on some seed and the other was not.

    Each value is a :class:`Compared`: the line as a string, with ``.paired`` (the
    :class:`tlhelpers.compare.Paired`), ``.verdict``, ``.mean``, ``.low``, ``.high`` and
    ``.comparable``. ``unit`` names what each seed scored (see :func:`tlhelpers.compare.paired`):
    ``"shifted test images"``, or ``"400 images x 3 shifts"`` to spell the count."""
    intervals = paired_against(results, baseline, unit=unit)
    base = results[baseline]
    lines = {}
    for name, interval in intervals.items():
        result = results[name]
        stuck = [(label, r) for label, r in ((name, result), (baseline, base)) if r.unconverged]
        if len(stuck) == 1:
            label, r = stuck[0]
            lines[name] = Compared(f"not comparable: {label} still improving at its cap on {r.unconverged} of "
                                   f"{len(r.trained)} seeds ({name} - {baseline} = {interval})", interval, False)
            continue
        text = interval.sentence(name, baseline)
        if len(stuck) == 2:
            text += " (both still improving at the cap: a verdict at this budget only)"
        lines[name] = Compared(text, interval)
    return lines


def table(results: Mapping[str, Result], split: str = "test", title: str | None = None,
          baseline: str | None = None, *, unit: str = "test images") -> str:
    """A fixed-width table: per method the final learning-rate grid and the rates chosen (``*``:
    at the grid's bound; ``!``: no rate improved on the start), steps kept and taken, epochs,
    converged on how many seeds, validation accuracy (which made the choices) and ``split``
    accuracy, over seeds. With ``baseline``, the lines below compare every other method with it
    (:func:`compared`); ``unit`` names what each seed scored in those lines ("3 seeds x 1200
    shifted test images" from ``unit="shifted test images"``, or ``unit="400 images x 3 shifts"``)."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    if not results:
        raise ValueError("table needs at least one method")
    width = max(len("method"), *(len(name) for name in results))
    header = (f"{'method':<{width}}  {'grid (rates)':>16}  {'lr chosen':>11}  {'steps kept/taken':>16}  "
              f"{'epochs':>6}  {'converged':>9}  {'validation':>20}  {split + ' (reported)':>20}")
    lines = ([title] if title else []) + [header, "-" * len(header)]
    any_bound = any_stuck = False
    for name, result in results.items():
        if not result.test_scores:
            raise ValueError(f"{name!r} has no runs")
        runs = result.trained
        if not runs:
            lines.append(f"{name:<{width}}  {'-':>16}  {'-':>11}  {'-':>16}  {'-':>6}  {'-':>9}  {'-':>20}  "
                         f"{compare.spread(result.test).format():>20}")
            continue
        bound = any(r.at_bound for r in runs)
        stuck = any(r.no_rate_improved for r in runs)
        any_bound |= bound
        any_stuck |= stuck
        chosen = _rates(r.lr for r in runs) + ("*" if bound else "") + ("!" if stuck else "")
        kept = compare.spread([r.best_step for r in runs]).mean
        taken = compare.spread([r.steps for r in runs]).mean
        epochs = compare.spread([r.epochs for r in runs]).mean
        converged = f"{len(runs) - result.unconverged}/{len(runs)}"
        lines.append(f"{name:<{width}}  {_grid(runs):>16}  {chosen:>11}  {f'{kept:.0f}/{taken:.0f}':>16}  "
                     f"{epochs:>6.1f}  {converged:>9}  {compare.spread(result.val).format():>20}  "
                     f"{compare.spread(result.test).format():>20}")
    n = {len(r.test_scores) for r in results.values()}
    caps = {r.max_steps for result in results.values() for r in result.trained}
    lines.append(f"mean ± std (worst-best) over {'/'.join(map(str, sorted(n)))} seeds; steps and epochs are means "
                 f"over seeds (cap {'/'.join(map(str, sorted(caps)))} steps); converged: seeds whose best check "
                 f"was not in the last {LAST_FRACTION:.0%} of the cap; validation made every choice, the last "
                 "column made none" + ("; * a chosen rate at the bound of its grid" if any_bound else "")
                 + (f"; ! on some seed {NO_RATE_IMPROVED} (the starting weights kept, the grid not grown)"
                    if any_stuck else ""))
    if baseline is not None:
        verdicts = compared(results, baseline, unit=unit)
        k = len(verdicts)
        lines.append(f"paired with the baseline, {baseline}, on {split} ({k} comparison{'s' if k > 1 else ''}"
                     + (f", Bonferroni: each interval at {1 - (1 - compare.CONFIDENCE) / k:.1%})" if k > 1 else ")")
                     + ":")
        lines += [f"  {name}: {text}" for name, text in verdicts.items()]
    return "\n".join(lines)
