"""Fair comparisons: three splits, one budget for every contender, every choice on validation.

A verdict such as "fine-tuning beat the linear probe" measures the methods only when nothing
else differs: not the number of steps, not the learning rate, not the images that chose the
best epoch. The course's comparison notebooks (04, 05, 07, 08) and the command line follow one
protocol, and this module is where it lives:

1. **Three splits** (:func:`three_splits`). *train* fits the weights; *validation* makes every
   choice (learning rate, best step, early stop, a mixing weight); *test* is scored once per
   final model and never used for a choice. Train and validation are drawn disjointly from the
   dataset's training files; test is the dataset's held-out split.
2. **One budget** (:class:`Budget`). Every contender gets the same cap of optimizer steps with
   the same optimizer and schedule (AdamW, cosine decay over the cap) and batches of the same
   size. With ``patience=None`` each uses every step (equal steps); otherwise each stops when
   validation has not improved for ``patience`` checks (its own early stop under the same cap).
   Either way the weights of the best validation check are the ones kept.
3. **One learning-rate grid** (``Budget.lrs``) for every contender; :func:`choose` trains once
   per rate from the same start and keeps the run with the best validation accuracy.
4. **Tables that show it** (:func:`table`): split, learning rate, steps, epochs, validation and
   test accuracy per method, so a reader sees the budget next to the verdict.

Verdicts over seeds come from :mod:`tlhelpers.compare`. Training a head on cached features
(``training.cache_features``) and training through the network use the same :func:`train`, so
a probe and a fine-tuned network are judged alike: converged against converged.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, default_collate

from tlhelpers import compare
from tlhelpers.checks import integer
from tlhelpers.data import FewShot, load_dataset
from tlhelpers.evaluation import accuracy
from tlhelpers.freezing import batchnorm_layers, set_bn_policy
from tlhelpers.robust import reestimate_batchnorm
from tlhelpers.runtime import model_device, seed_everything
from tlhelpers.training import _loss_of

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
            raise ValueError(f"the training split has only {smallest} images in its smallest class; "
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
                raise ValueError(
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

@dataclass(frozen=True)
class Budget:
    """What every contender in one comparison gets.

    ``max_steps`` optimizer steps at most, batches of ``batch_size``, AdamW with cosine decay
    from the learning rate to zero over ``max_steps``, a validation check every ``eval_every``
    steps (and before the first), early stop after ``patience`` checks without a new best
    (``None``: every contender takes all ``max_steps``), and the learning rates ``lrs`` tried.
    """

    max_steps: int = 120
    batch_size: int = 32
    lrs: tuple[float, ...] = (1e-3, 1e-4)
    eval_every: int = 10
    patience: int | None = 4
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "eval_every"):
            _positive_int(getattr(self, name), name)
        if self.patience is not None:
            _positive_int(self.patience, "patience (or None for equal steps)")
        lrs = tuple(self.lrs)
        if not lrs or any(isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 for lr in lrs):
            raise ValueError(f"lrs must be a non-empty sequence of positive learning rates, got {self.lrs!r}")
        object.__setattr__(self, "lrs", tuple(float(lr) for lr in lrs))
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")

    def describe(self) -> str:
        stop = ("every contender takes all of them (equal steps)" if self.patience is None else
                f"each stops after {self.patience} validation checks without a new best (every "
                f"{self.eval_every} steps), keeping its best check")
        rates = (f"learning rate {self.lrs[0]:g} for every contender" if len(self.lrs) == 1 else
                 "learning rate chosen on validation from {" + ", ".join(f"{lr:g}" for lr in self.lrs) + "}")
        return (f"at most {self.max_steps} AdamW steps of {self.batch_size} images, cosine decay, "
                f"weight decay {self.weight_decay:g}; {stop}; {rates}")


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
    tried: dict[float, float] = field(default_factory=dict)   # lr -> best validation accuracy (choose)

    @property
    def epochs(self) -> float:
        """Passes over the training split up to the kept step."""
        return self.best_step * self.batch_size / self.train_size

    def describe(self) -> str:
        stop = "early stop" if self.stopped_early else "cap"
        return (f"lr {self.lr:g}, kept step {self.best_step} of {self.steps} ({stop}), {self.epochs:.1f} epochs, "
                f"validation {self.val_acc:.1%}")


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
    """AdamW over ``params``; a param group's ``lr_scale`` multiplies ``lr`` for that group."""
    groups = list(params)
    if not groups:
        raise ValueError("no parameters to train: pass the trainable parameters (or param groups)")
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    built = []
    for group in groups:
        group = dict(group)
        group["params"] = [p for p in group["params"] if p.requires_grad]
        group["lr"] = lr * float(group.pop("lr_scale", 1.0))
        if group["params"]:
            built.append(group)
    if not built:
        raise ValueError("none of the parameters given requires grad: unfreeze what should train")
    return torch.optim.AdamW(built, lr=lr, weight_decay=weight_decay)


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Accuracy of ``model`` on ``dataset`` under eval() + inference_mode (BatchNorm, Dropout off)."""
    return accuracy(model, DataLoader(dataset, batch_size=batch_size))


def train(model: nn.Module, params: Iterable, train_set: Dataset, val_set: Dataset, budget: Budget,
          lr: float, *, seed: int = 0, loss_fn: Callable | None = None,
          bn_policy: str = "frozen-eval", recompute_bn: bool = False, restore_best: bool = True) -> Run:
    """Train ``params`` of ``model`` under ``budget`` at learning rate ``lr``; keep the best validation check.

    ``params`` are parameters or param groups (a group's ``"lr_scale"`` multiplies ``lr``, for
    discriminative rates). Batches are drawn from consecutive shuffled passes over
    ``train_set`` with ``seed``. ``model`` ends with the weights of its best check. The test
    split is not an argument: no choice here can read it. ``bn_policy`` is applied after every
    ``model.train()`` (see :func:`tlhelpers.freezing.set_bn_policy`): with the default
    ``"frozen-eval"`` a BatchNorm layer whose scale or shift trains is in train mode and moves
    its running statistics; pass ``"eval"`` to keep every layer's statistics fixed.

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
    optimizer = _optimizer(params, lr, budget.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, budget.max_steps) / budget.max_steps)))
    generator = torch.Generator().manual_seed(seed)
    batches = _batches(n, budget.batch_size, generator)

    if recompute_bn and not batchnorm_layers(model):
        raise ValueError(f"recompute_bn=True but {type(model).__name__} has no BatchNorm layer with running "
                         "statistics: leave it False")

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
    for step in range(1, budget.max_steps + 1):
        model.train()
        set_bn_policy(model, bn_policy)
        rows = next(batches)
        inputs, labels = data.tensors[0][rows].to(device), data.tensors[1][rows].to(device)
        optimizer.zero_grad(set_to_none=True)
        loss, _, _ = _loss_of(model(inputs), labels, loss_fn)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % budget.eval_every == 0 or step == budget.max_steps:
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
               batch_size=min(budget.batch_size, n), stopped_early=stopped)


def choose(build: Callable[[], tuple[nn.Module, Iterable]], train_set: Dataset, val_set: Dataset,
           budget: Budget, *, seed: int = 0, **train_kwargs) -> tuple[nn.Module, Run]:
    """Train one contender at every rate of ``budget.lrs`` and keep the best on validation.

    ``build()`` returns a fresh ``(model, params)``; it is called after seeding with ``seed``
    for every rate, so each rate starts from the same weights. Returns the chosen model and its
    :class:`Run`, whose ``tried`` maps every rate to its validation accuracy. Ties go to the
    earlier rate in the grid.
    """
    best: tuple[nn.Module, Run] | None = None
    tried: dict[float, float] = {}
    for lr in budget.lrs:
        seed_everything(seed)
        model, params = build()
        run = train(model, params, train_set, val_set, budget, lr, seed=seed, **train_kwargs)
        tried[lr] = run.val_acc
        if best is None or run.val_acc > best[1].val_acc:
            best = (model, run)
    best[1].tried = tried
    return best


def contest(contenders: Mapping[str, Callable[[], tuple[nn.Module, Iterable]]], splits: Splits | None = None,
            budget: Budget | None = None, *, seed: int = 0, train_set: Dataset | None = None,
            val_set: Dataset | None = None, test_set: Dataset | None = None,
            **train_kwargs) -> dict[str, tuple[Run, float]]:
    """One seed of a comparison: :func:`choose` every contender on train/validation, then score
    each chosen model once on test. Returns ``{name: (run, test accuracy)}``.

    The splits come from ``splits`` or from ``train_set`` / ``val_set`` / ``test_set`` (for
    cached features). Every choice is made before the first test image is read.
    """
    if splits is not None:
        train_set, val_set, test_set = splits.train, splits.val, splits.test
    if train_set is None or val_set is None or test_set is None:
        raise ValueError("contest needs splits=, or train_set=, val_set= and test_set=")
    budget = budget or Budget()
    chosen = {name: choose(build, train_set, val_set, budget, seed=seed, **train_kwargs)
              for name, build in contenders.items()}
    return {name: (run, evaluate(model, test_set)) for name, (model, run) in chosen.items()}


# --------------------------------------------------------------------------- tables

@dataclass
class Result:
    """One method over seeds: a :class:`Run` and a test accuracy per seed."""

    runs: list[Run] = field(default_factory=list)
    test: list[float] = field(default_factory=list)

    def add(self, run: Run, test_accuracy: float) -> None:
        self.runs.append(run)
        self.test.append(float(test_accuracy))

    @property
    def val(self) -> list[float]:
        return [run.val_acc for run in self.runs]


def _values(items: Iterable[float]) -> str:
    values = sorted(set(items))
    return "/".join(f"{v:g}" for v in values)


def table(results: Mapping[str, Result], split: str = "test", title: str | None = None) -> str:
    """A fixed-width table: per method the learning rates chosen, the steps kept and taken,
    the epochs, validation accuracy (which made the choices) and ``split`` accuracy, over seeds."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    if not results:
        raise ValueError("table needs at least one method")
    width = max(len("method"), *(len(name) for name in results))
    header = (f"{'method':<{width}}  {'lr (chosen)':>12}  {'steps kept/taken':>18}  {'epochs':>7}  "
              f"{'validation':>22}  {split + ' (reported)':>22}")
    lines = ([title] if title else []) + [header, "-" * len(header)]
    for name, result in results.items():
        if not result.runs:
            raise ValueError(f"{name!r} has no runs")
        kept = compare.spread([r.best_step for r in result.runs]).mean
        taken = compare.spread([r.steps for r in result.runs]).mean
        epochs = compare.spread([r.epochs for r in result.runs]).mean
        lines.append(f"{name:<{width}}  {_values(r.lr for r in result.runs):>12}  {f'{kept:.0f}/{taken:.0f}':>18}  "
                     f"{epochs:>7.1f}  {compare.spread(result.val).format():>22}  "
                     f"{compare.spread(result.test).format():>22}")
    n = {len(r.runs) for r in results.values()}
    lines.append(f"mean ± std (worst-best) over {'/'.join(map(str, sorted(n)))} seeds; steps and epochs are "
                 "means over seeds; validation made every choice, the last column made none")
    return "\n".join(lines)
