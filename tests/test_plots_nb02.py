"""tlhelpers.plots.stage_boxes (notebook 02): one box per stage, as tall as its resolution, labelled."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib

matplotlib.use("Agg")

from matplotlib.patches import Rectangle

from tlhelpers import plots


def test_stage_boxes_one_box_per_stage_with_its_resolution_and_channels():
    shapes = {"stem": (32, 112, 112), "stage1": (16, 112, 112), "stage5": (320, 7, 7)}
    figure = plots.stage_boxes(shapes, title="three stages")
    ax = figure.axes[0]
    boxes = [patch for patch in ax.patches if isinstance(patch, Rectangle)]
    assert [box.get_height() for box in boxes] == [112, 112, 7]
    widths = [box.get_width() for box in boxes]
    assert widths[2] > widths[0] > widths[1]                      # more channels, wider box
    lefts = [box.get_x() for box in boxes]
    assert all(a + w < b for a, w, b in zip(lefts, widths, lefts[1:], strict=False))   # no overlap
    texts = [text.get_text() for text in ax.texts]
    assert texts == ["stem\n112x112\n32 ch", "stage1\n112x112\n16 ch", "stage5\n7x7\n320 ch"]
    assert ax.get_title() == "three stages"
    assert ax.get_xlim()[1] >= lefts[-1] + widths[-1]              # the last box is inside the axes
