"""The three splits of a seed: train fits, validation chooses, test only reports (see :mod:`tlhelpers.protocol`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset, default_collate

from tlhelpers.checks import integer
from tlhelpers.data import DatasetError, FewShot, load_dataset

SPLIT_NAMES = ("train", "validation", "test")


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
