"""Figures the notebooks show: learning curves, prediction grids, confusion matrices, results over seeds.

Every function returns a matplotlib ``Figure`` and closes it in pyplot first. In a notebook,
a call on the last line of a cell shows the figure once (IPython displays the returned
object); assigned to a name it shows nothing until you ``display(fig)`` it. Left open, pyplot's
inline backend would also draw it at the end of the cell, twice in all. Tests can inspect the
figure without leaking open figures.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tlhelpers import compare
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
    for ax, image, guess, truth in zip(axes.flat, images, predicted, targets, strict=False):
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


def _spread_of(values: Sequence[float]) -> tuple[float, float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.mean() - array.min()), float(array.max() - array.mean())


#: Characters per line of a bar's label in :func:`bars_over_seeds` (a bar is 1.3 inches wide).
TICK_CHARACTERS = 16


def bars_over_seeds(results: Mapping[str, Sequence[float]], ylabel: str = "validation accuracy",
                    title: str = "", chance: float | None = None, percent: bool = True, *,
                    baseline: str | None = None) -> Figure:
    """One bar per method at its mean over seeds, every seed as a dot.

    Without ``baseline`` (the default) the error bar runs from the worst to the best seed: a
    description of the spread, **not** the test a verdict uses (two methods whose ranges overlap
    can still be separated, because each seed scores both on the same images). The title says so.

    With ``baseline="name"`` the figure shows what the verdicts rest on: one bar per other method
    at its mean difference from the baseline (in points with ``percent``), the error bar its
    **paired 95% interval** (:func:`tlhelpers.compare.against`, Bonferroni-widened over the k
    comparisons, as :func:`tlhelpers.protocol.table` prints it), each seed's difference as a dot,
    a line at 0, and the verdict under each name: a bar whose error bar clears 0 "beat" the
    baseline. ``results[name]`` is then one value per seed, or the (seeds, test images) per-image
    scores (``protocol.Result.scores``), which give exactly the table's intervals. To draw
    intervals already computed, use :func:`paired_bars`.
    """
    if baseline is not None:
        intervals = compare.against(baseline, {name: np.asarray(values, dtype=float)
                                               for name, values in results.items()}, percent=percent)
        return paired_bars(intervals, baseline, ylabel=ylabel, title=title)
    names = list(results)
    figure, ax = plt.subplots(figsize=(1.3 * len(names) + 2.5, 3.4), dpi=100)
    for x, name in enumerate(names):
        mean, below, above = _spread_of(results[name])
        ax.bar(x, mean, color=f"C{x}", alpha=0.75, width=0.6)
        ax.errorbar(x, mean, yerr=[[below], [above]], color="black", capsize=5, lw=1.2)
        ax.scatter([x] * len(results[name]), results[name], color="black", s=12, zorder=3)
        ax.text(x, 0.02 if percent else 0, f"{mean:.0%}" if percent else f"{mean:.3g}", ha="center",
                va="bottom", fontsize=9, color="white", fontweight="bold")
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1)
        ax.text(len(names) - 0.5, chance, " chance", va="bottom", ha="right", fontsize=8, color="grey")
    # long names wrap onto several lines under their own bar, so neighbours never overlap
    ax.set_xticks(range(len(names)), [textwrap.fill(name, TICK_CHARACTERS) for name in names], fontsize=9)
    ax.set(ylabel=ylabel, title=title or "mean over seeds; bar: worst to best seed; dots: each seed")
    if percent:
        ax.set_ylim(0, 1)
        ax.yaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    ax.grid(axis="y", alpha=0.3)
    return _finish(figure)


def _percent(confidence: float) -> str:
    """``95%``, ``97.5%``, ``98.3%``."""
    return f"{confidence:.1%}".replace(".0%", "%")


def paired_bars(intervals: Mapping[str, object], baseline: str, ylabel: str = "test accuracy",
                title: str = "") -> Figure:
    """Each method minus ``baseline``: a bar at the mean paired difference, the error bar its
    interval (the one its verdict uses), each seed's difference as a dot, a line at 0.

    ``intervals`` maps names to :class:`tlhelpers.compare.Paired` (from ``compare.against``,
    ``protocol.paired_against``, or the ``.paired`` of ``protocol.compared``'s lines). The axis is
    zoomed to the differences (0 always shown); the title names the error bar, with its
    confidence; each name carries its verdict. A comparison on one seed has no error bar.
    """
    if not intervals:
        raise ValueError("paired_bars needs at least one comparison with the baseline")
    intervals = {name: getattr(value, "paired", value) for name, value in intervals.items()}
    names = list(intervals)
    first = intervals[names[0]]
    scale = 100.0 if first.percent else 1.0
    figure, ax = plt.subplots(figsize=(1.3 * len(names) + 2.5, 3.4), dpi=100)
    reach = [0.0]
    for x, name in enumerate(names):
        paired = intervals[name]
        mean = paired.mean * scale
        ax.bar(x, mean, color=f"C{x + 1}", alpha=0.75, width=0.6)
        dots = [d * scale for d in paired.per_seed]
        ax.scatter([x] * len(dots), dots, color="black", s=12, zorder=3)
        reach += dots + [mean]
        if np.isfinite(paired.low) and np.isfinite(paired.high) and paired.spread_from != "none":
            low, high = paired.low * scale, paired.high * scale
            ax.errorbar(x, mean, yerr=[[mean - low], [high - mean]], color="black", capsize=5, lw=1.4)
            reach += [low, high]
    ax.axhline(0, color="black", lw=0.8)
    low, high = min(reach), max(reach)
    pad = 0.08 * (high - low or 1.0)
    ax.set_ylim(low - pad, high + pad)
    labels = [textwrap.fill(name, TICK_CHARACTERS) + f"\n({intervals[name].verdict})" for name in names]
    ax.set_xticks(range(len(names)), labels, fontsize=9)
    units = " (points)" if first.percent else ""
    ax.set_ylabel(textwrap.fill(f"{ylabel}: minus {baseline}{units}", 28))
    each = "/".join(_percent(c) for c in sorted({p.confidence for p in intervals.values()}))
    level = (f"{_percent(compare.CONFIDENCE)} interval, Bonferroni over {len(names)} (each at {each})"
             if len(names) > 1 else f"{each} interval")
    ax.set_title(title or textwrap.fill(f"bar: mean difference from {baseline}; error bar: paired {level}; "
                                        "dots: each seed", 60), fontsize=9)
    if first.percent:
        ax.yaxis.set_major_formatter(lambda value, _: f"{value:+g}" if value else "0")   # -2.5 stays -2.5
    ax.grid(axis="y", alpha=0.3)
    return _finish(figure)


def lines_over_seeds(results: Mapping[str, Mapping[float, Sequence[float]]], xlabel: str,
                     ylabel: str = "validation accuracy", title: str = "", chance: float | None = None,
                     log_x: bool = False, ax=None) -> Figure:
    """Per method, the mean over seeds at each x with an error bar from the worst to the best seed
    (a description of the spread, not a verdict's test: see :func:`paired_bars` for that).

    ``results[method][x]`` holds one value per seed. Pass ``ax`` to draw into a panel of a
    larger figure (that figure is returned, and closed if it is a pyplot figure).
    """
    owned = ax is None
    if owned:
        figure, ax = plt.subplots(figsize=(6.2, 3.8), dpi=100)
    else:
        figure = ax.figure
    for index, (name, by_x) in enumerate(results.items()):
        xs = sorted(by_x)
        stats = [_spread_of(by_x[x]) for x in xs]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[[s[1] for s in stats], [s[2] for s in stats]],
                    marker="osD^v<>"[index % 7], capsize=3, label=name, color=f"C{index}")
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
    if log_x:
        ax.set_xscale("log")
        ax.minorticks_off()
    xs_all = sorted({x for by_x in results.values() for x in by_x})
    ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, ylim=(0, 1))
    ax.yaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    ax.grid(alpha=0.3)
    if owned:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        return _finish(figure)
    return figure


def plot_learning_rates(histories: History | Mapping[str, History], title: str = "") -> Figure:
    """The learning rate each epoch started with, every param group, on a log axis."""
    runs = {"": histories} if isinstance(histories, History) else dict(histories)
    figure, ax = plt.subplots(figsize=(6.2, 3.2), dpi=100)
    for index, (name, history) in enumerate(runs.items()):
        groups = len(history.group_lrs[0]) if history.group_lrs else 1
        for group in range(groups):
            values = [lrs[group] for lrs in history.group_lrs] if history.group_lrs else history.lr
            label = " ".join(part for part in (name, f"group {group}" if groups > 1 else "") if part)
            ax.plot(history.epoch, values, marker="o", ms=3, color=f"C{index}",
                    ls=["-", "--", ":", "-."][group % 4], label=label or None)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="learning rate (log scale)", title=title)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return _finish(figure)


def show_samples(images: torch.Tensor, labels: Sequence[int], classes: Sequence[str], per_class: int = 1,
                 normalized: bool = True, title: str = "") -> Figure:
    """A balanced grid: ``per_class`` images of every class (the first ones found), one row each."""
    labels = [int(label) for label in labels]
    rows = per_class
    figure, axes = plt.subplots(rows, len(classes), figsize=(1.25 * len(classes), 1.45 * rows + 0.3),
                                squeeze=False, dpi=100)
    for column, name in enumerate(classes):
        found = [i for i, label in enumerate(labels) if label == column][:per_class]
        for row in range(rows):
            ax = axes[row][column]
            ax.axis("off")
            if row < len(found):
                image = images[found[row]]
                ax.imshow(to_displayable(image) if normalized else image.permute(1, 2, 0).numpy())
            if row == 0:
                ax.set_title(name, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return _finish(figure)


def stage_boxes(shapes: Mapping[str, Sequence[int]], title: str = "") -> Figure:
    """One box per stage, from the input to the head: height = the stage's resolution (pixels per side),
    width grows with its channels (square-root scale), each labelled with its name, size and channels.

    ``shapes[stage]`` is ``(channels, height, width)``, as a forward hook records it (notebook 02).
    """
    figure, ax = plt.subplots(figsize=(11, 3.4), dpi=100)
    left, top = 0.0, max(shape[1] for shape in shapes.values())
    for stage, (channels, height, width) in shapes.items():
        box = 0.6 + channels ** 0.5 / 8
        ax.add_patch(plt.Rectangle((left, -height / 2), box, height, facecolor="tab:blue", alpha=0.35,
                                   edgecolor="black"))
        ax.text(left + box / 2, height / 2 + 3, f"{stage}\n{height}x{width}\n{channels} ch",
                ha="center", va="bottom", fontsize=10)
        left += box + 0.8
    ax.set(xlim=(-0.4, left), ylim=(-top / 2 - 4, top / 2 + 45), xticks=[], yticks=[])
    ax.set_title(title or "box height = resolution, box width grows with the channels", fontsize=11)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return _finish(figure)
