"""tlhelpers.plots: the figures carry the data they were given."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib

matplotlib.use("Agg")

import numpy as np
import torch

from tlhelpers import plots
from tlhelpers.training import History


def history(offset: float = 0.0) -> History:
    h = History()
    for epoch in range(1, 4):
        h.append(epoch=epoch, train_loss=1.0 / epoch + offset, train_acc=0.5 + 0.1 * epoch,
                 val_loss=1.2 / epoch + offset, val_acc=0.4 + 0.1 * epoch, lr=0.1, seconds=1.0)
    return h


def test_plot_history_draws_train_and_val_per_run():
    figure = plots.plot_history({"frozen": history(), "fine-tuned": history(0.1)}, title="runs")
    loss_ax, acc_ax = figure.axes
    labels = [line.get_label() for line in loss_ax.get_lines()]
    assert labels == ["frozen train", "frozen val", "fine-tuned train", "fine-tuned val"]
    np.testing.assert_allclose(acc_ax.get_lines()[1].get_ydata(), [0.5, 0.6, 0.7])
    assert figure._suptitle.get_text() == "runs"


def test_plot_history_without_validation_draws_only_training():
    h = History()
    h.append(epoch=1, train_loss=1.0, train_acc=0.5, val_loss=None, val_acc=None, lr=0.1, seconds=1.0)
    loss_ax, _ = plots.plot_history(h).axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train"]


def test_show_predictions_colours_right_and_wrong():
    images = torch.zeros(3, 3, 8, 8)
    figure = plots.show_predictions(images, [0, 1, 1], [0, 1, 0], ["cat", "dog"], columns=2)
    titled = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == ["cat\n(cat)", "dog\n(dog)", "dog\n(cat)"]
    assert [ax.title.get_color() for ax in titled] == ["green", "green", "red"]


def test_to_displayable_undoes_imagenet_normalisation():
    pixel = torch.tensor([0.2, 0.5, 0.9]).view(3, 1, 1)
    mean = torch.tensor(plots.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(plots.IMAGENET_STD).view(3, 1, 1)
    np.testing.assert_allclose(plots.to_displayable((pixel - mean) / std)[0, 0], [0.2, 0.5, 0.9], atol=1e-6)


def test_confusion_matrix_figure_writes_every_count():
    matrix = torch.tensor([[5, 1], [0, 4]])
    figure = plots.plot_confusion_matrix(matrix, ["a", "b"])
    texts = sorted(t.get_text() for t in figure.axes[0].texts)
    assert texts == ["0", "1", "4", "5"]


def test_figures_are_closed_so_a_notebook_shows_them_once():
    import matplotlib.pyplot as plt

    plt.close("all")
    figures = [plots.plot_history(history()),
               plots.plot_confusion_matrix(torch.eye(3, dtype=torch.long), ["a", "b", "c"]),
               plots.show_predictions(torch.zeros(2, 3, 8, 8), [0, 1], [0, 0], ["a", "b"])]
    assert plt.get_fignums() == [], "an open pyplot figure is drawn again at the end of the cell"
    assert all(f.dpi >= 100 for f in figures)


def test_bars_over_seeds_show_mean_and_every_seed():
    figure = plots.bars_over_seeds({"a": [0.5, 0.7, 0.6], "b": [0.2, 0.3, 0.25]}, chance=0.1)
    ax = figure.axes[0]
    assert [round(p.get_height(), 6) for p in ax.patches] == [0.6, 0.25]
    dots = np.concatenate([c.get_offsets() for c in ax.collections if c.get_offsets().shape[0] == 3])
    np.testing.assert_allclose(sorted(dots[:, 1]), sorted([0.5, 0.7, 0.6, 0.2, 0.3, 0.25]))


def test_lines_over_seeds_draw_the_range_over_seeds():
    figure = plots.lines_over_seeds({"probe": {5: [0.5, 0.6], 20: [0.7, 0.8]}}, xlabel="per class", log_x=True)
    line = figure.axes[0].get_lines()[0]
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), [0.55, 0.75])
    assert figure.axes[0].get_xscale() == "log"


def test_learning_rates_are_on_a_log_axis_per_group():
    h = history()
    h.group_lrs = [[0.1, 0.01]] * 3
    ax = plots.plot_learning_rates({"run": h}).axes[0]
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 2


def test_show_samples_is_balanced():
    images = torch.zeros(6, 3, 8, 8)
    figure = plots.show_samples(images, [0, 0, 1, 2, 1, 2], ["x", "y", "z"], per_class=2)
    assert len(figure.axes) == 6 and [ax.get_title() for ax in figure.axes[:3]] == ["x", "y", "z"]
    assert all(len(ax.images) == 1 for ax in figure.axes)


def test_long_bar_labels_wrap_instead_of_overlapping():
    names = ["1: head only", "2: + blocks, rate chosen on validation", "2: + blocks at backbone lr 0.01",
             "2: + blocks at backbone lr 0.001", "linear model on raw pixels, standardised"]
    figure = plots.bars_over_seeds({name: [0.7, 0.8, 0.75] for name in names})
    figure.canvas.draw()
    ax = figure.axes[0]
    boxes = [label.get_window_extent() for label in ax.get_xticklabels()]
    assert all(not a.overlaps(b) for a, b in zip(boxes, boxes[1:], strict=False)), "neighbouring bar labels overlap"
    assert all("\n" in label.get_text() for label in ax.get_xticklabels()[1:])


def test_bars_over_seeds_says_its_default_range_is_not_a_verdict():
    doc = plots.bars_over_seeds.__doc__
    assert "every seed above every seed" not in doc and "the spread a verdict has to beat" not in doc
    assert "not** the test a verdict uses" in doc and "paired 95% interval" in doc
    title = plots.bars_over_seeds({"a": [0.5, 0.7, 0.6]}).axes[0].get_title()
    assert title == "mean over seeds; bar: worst to best seed; dots: each seed"        # the default, unchanged


def test_bars_against_a_baseline_show_the_paired_interval_the_verdict_uses():
    """Ranges overlap (probe 0.70-0.80, fine-tune 0.72-0.82), yet on each seed fine-tune is 2 points
    higher: the paired interval clears 0, and the figure draws that interval, labelled."""
    from tlhelpers import compare

    probe = [0.70, 0.80, 0.75, 0.72]
    results = {"probe": probe, "fine-tune": [p + d for p, d in zip(probe, (0.02, 0.025, 0.015, 0.02), strict=True)],
               "scratch": [p - d for p, d in zip(probe, (0.10, 0.02, 0.15, 0.0), strict=True)]}
    figure = plots.bars_over_seeds(results, ylabel="test accuracy", baseline="probe")
    ax = figure.axes[0]
    expected = compare.against("probe", {name: np.asarray(v) for name, v in results.items()})
    assert [round(p.get_height(), 6) for p in ax.patches] == [round(expected[n].mean * 100, 6)
                                                            for n in ("fine-tune", "scratch")]
    bars = [c for c in ax.containers if hasattr(c, "has_yerr") and c.has_yerr]
    assert len(bars) == 2
    for container, name in zip(bars, ("fine-tune", "scratch"), strict=True):
        segment = container.lines[2][0].get_segments()[0]
        np.testing.assert_allclose(sorted(segment[:, 1]), [expected[name].low * 100, expected[name].high * 100])
    labels = [label.get_text() for label in ax.get_xticklabels()]
    assert labels == ["fine-tune\n(beat)", "scratch\n(not separated)"]
    title = ax.get_title().replace("\n", " ")
    assert "error bar: paired 95% interval, Bonferroni over 2 (each at 97.5%)" in title
    assert "minus probe (points)" in ax.get_ylabel().replace("\n", " ")
    low, high = ax.get_ylim()
    assert low < expected["scratch"].low * 100 and high > expected["fine-tune"].high * 100 and high < 20  # zoomed
    from matplotlib.collections import PathCollection
    dots = np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    np.testing.assert_allclose(sorted(dots[:, 1]), sorted(100 * np.concatenate([expected[n].per_seed
                                                                               for n in expected])))


def test_paired_bars_take_the_intervals_a_table_printed():
    from tlhelpers import compare

    rng = np.random.default_rng(0)
    scores = {"probe": (rng.random((3, 200)) < 0.6).astype(float), "LP-FT": (rng.random((3, 200)) < 0.8).astype(float)}
    single = compare.against("probe", scores)
    ax = plots.paired_bars(single, "probe").axes[0]
    assert "error bar: paired 95% interval;" in ax.get_title().replace("\n", " ")
    # per-image scores through bars_over_seeds give the same intervals, one seed gives no error bar
    same = plots.bars_over_seeds(scores, baseline="probe").axes[0]
    assert [p.get_height() for p in same.patches] == [p.get_height() for p in ax.patches]
    one = plots.paired_bars({"LP-FT": compare.paired([[1.0, 0.0]], [[0.0, 0.0]])}, "probe").axes[0]
    assert not [c for c in one.containers if getattr(c, "has_yerr", False)]


def test_paired_bars_label_half_point_ticks_as_they_are():
    """A tick at -2.5 points reads -2.5, not a rounded -2 beside a -2 tick."""
    from tlhelpers import compare

    small = compare.paired([[0.97, 0.98, 0.99]], [[1.0, 1.0, 1.0]])   # a 2-point gap, one seed
    ax = plots.paired_bars({"A": small}, "B").axes[0]
    formatter = ax.yaxis.get_major_formatter()
    assert [formatter(v, 0) for v in (-2.5, -2.0, 0.0, 1.5)] == ["-2.5", "-2", "0", "+1.5"]
