"""tlhelpers.figure_text: a figure's alternative text says what it shows, from the figure itself."""

from __future__ import annotations

import matplotlib
import matplotlib.figure

matplotlib.use("Agg")
from types import SimpleNamespace  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from IPython.core.formatters import DisplayFormatter  # noqa: E402

from tlhelpers import figure_text  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_a_line_chart_names_its_title_axes_and_legend():
    fig, ax = plt.subplots()
    ax.plot([0, 10, 20], [0.5, 0.7, 0.8], label="probe")
    ax.plot([0, 10, 20], [0.4, 0.75, 0.85], label="fine-tuning")
    ax.set(title="Validation over steps", xlabel="step", ylabel="validation accuracy")
    ax.legend()
    assert figure_text.describe(fig) == ("Figure. Validation over steps: a line chart (2 lines) of validation "
                                         "accuracy against step; legend: probe, fine-tuning.")


def test_panels_bars_images_and_a_suptitle():
    fig, (left, right) = plt.subplots(1, 2)
    left.bar(["frozen", "trainable"], [1.0, 2.0])
    left.set_ylabel("seconds")
    right.imshow(np.zeros((4, 4)))
    right.set_title("feature map")
    fig.colorbar(right.images[0], ax=right)
    fig.suptitle("Cost and a map")
    assert figure_text.describe(fig) == ("Figure: Cost and a map. 2 panels: (1) A bar chart (2 bars) of seconds; "
                                         "(2) feature map: an image.")


def test_a_grid_of_images_lists_their_titles():
    fig, axes = plt.subplots(2, 5)
    for i, ax in enumerate(axes.flat):
        ax.imshow(np.zeros((2, 2)))
        ax.set_title(f"class {i}")
        ax.axis("off")
    text = figure_text.describe(fig)
    assert text == ("Figure. A grid of 10 images, titled: class 0, class 1, class 2, class 3, class 4, class 5, "
                    "class 6, class 7 and 2 more.")


def test_install_attaches_the_text_to_every_displayed_figure():
    shell = SimpleNamespace(display_formatter=DisplayFormatter())   # a kernel's formatters, no kernel
    # what matplotlib's inline backend registers in a kernel: a PNG for every Figure
    shell.display_formatter.formatters["image/png"].for_type(matplotlib.figure.Figure, lambda fig: b"PNG")
    assert figure_text.install(shell)
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    ax.set_title("a title")
    data, metadata = shell.display_formatter.format(fig)
    assert data["image/png"] == b"PNG"                 # the backend's image, untouched
    assert metadata["image/png"]["alt"] == "Figure. a title: a line chart."


def test_text_written_on_the_figure_is_read_too():
    fig, ax = plt.subplots()
    ax.bar(["a"], [1.0])
    fig.text(0.01, 0.99, "Freeze simulator · mobilenet_v2")
    fig.text(0.01, 0.95, "Gradients flow through classifier and stop at head_conv")
    assert figure_text.describe(fig) == ("Figure. Freeze simulator · mobilenet_v2. Gradients flow through classifier "
                                         "and stop at head_conv. A bar chart (1 bar).")
