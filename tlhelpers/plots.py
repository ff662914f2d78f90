"""Figures the notebooks show: learning curves, prediction grids, confusion matrices.

Every function returns a matplotlib ``Figure`` and closes it in pyplot first. In a notebook,
a call on the last line of a cell shows the figure once (IPython displays the returned
object); assigned to a name it shows nothing until you ``display(fig)`` it. Left open, pyplot's
inline backend would also draw it at the end of the cell, twice in all. Tests can inspect the
figure without leaking open figures.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
import torch
from matplotlib.figure import Figure

from tlhelpers.data import IMAGENET_MEAN, IMAGENET_STD
from tlhelpers.training import History


def _finish(figure: Figure) -> Figure:
    """Lay the figure out and close it in pyplot, so it is displayed only when returned."""
    figure.tight_layout()
    plt.close(figure)
    return figure


def plot_history(histories: History | Mapping[str, History], title: str = "") -> Figure:
    """Loss and accuracy per epoch; several runs (a name -> History mapping) share the axes."""
    runs = {"": histories} if isinstance(histories, History) else dict(histories)
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for index, (name, history) in enumerate(runs.items()):
        colour = f"C{index}"
        label = f"{name} " if name else ""
        loss_ax.plot(history.epoch, history.train_loss, "--", color=colour, label=f"{label}train")
        acc_ax.plot(history.epoch, history.train_acc, "--", color=colour, label=f"{label}train")
        if history.val_loss and history.val_loss[0] is not None:
            loss_ax.plot(history.epoch, history.val_loss, "-o", color=colour, ms=3, label=f"{label}val")
            acc_ax.plot(history.epoch, history.val_acc, "-o", color=colour, ms=3, label=f"{label}val")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    if title:
        figure.suptitle(title)
    return _finish(figure)


def to_displayable(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Undo ImageNet normalisation of a CxHxW tensor and return HxWxC floats in [0, 1]."""
    image = image.detach().cpu().float()
    image = image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


def show_predictions(images: torch.Tensor, predicted: Sequence[int], targets: Sequence[int],
                     classes: Sequence[str], columns: int = 8, normalized: bool = True) -> Figure:
    """A grid of images titled "predicted (true)": green when right, red when wrong."""
    count = len(images)
    rows = max(1, int(np.ceil(count / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False, dpi=100)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, guess, truth in zip(axes.flat, images, predicted, targets):
        shown = to_displayable(image) if normalized else image.permute(1, 2, 0).numpy()
        ax.imshow(shown)
        right = int(guess) == int(truth)
        ax.set_title(f"{classes[int(guess)]}\n({classes[int(truth)]})", fontsize=8,
                     color="green" if right else "red")
    return _finish(figure)


def plot_confusion_matrix(matrix: torch.Tensor, classes: Sequence[str], title: str = "") -> Figure:
    """Counts with the true class on rows and the prediction on columns, numbers in cells."""
    counts = matrix.cpu().numpy()
    figure, ax = plt.subplots(figsize=(0.55 * len(classes) + 2.5, 0.55 * len(classes) + 2), dpi=100)
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    threshold = counts.max() / 2 if counts.size else 0
    for (row, col), value in np.ndenumerate(counts):
        ax.text(col, row, str(value), ha="center", va="center", fontsize=8,
                color="white" if value > threshold else "black")
    return _finish(figure)
