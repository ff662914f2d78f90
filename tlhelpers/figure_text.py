"""Alternative text for figures: what a figure shows, in words, from its own titles, axes and legends.

The course website shows each notebook's figures as images. A screen reader reads an image's
alternative text, and nbconvert writes ``alt="No description has been provided for this image"``
unless the output's metadata carries one. :func:`describe` builds a description from what the
figure itself holds (its title, each panel's title, axis labels, legend entries, how many
lines, bars or images it draws), so it changes when the figure does and never needs writing by
hand. :func:`install` makes IPython attach it to every matplotlib figure it displays, as the
``alt`` metadata of the ``image/png`` output (``scripts/run_notebooks.py`` installs it in each
kernel, so ``make notebooks`` stores it and ``make book`` writes it into ``<img alt>``).
Imports matplotlib only.
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

#: Panels described one by one; a figure with more is summarised after these.
MAX_PANELS = 6
#: Image titles listed for a grid of images.
MAX_TITLES = 8


def _text(value: str) -> str:
    return " ".join(value.split())


def _labels(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    if legend is not None:
        return [_text(t.get_text()) for t in legend.get_texts() if t.get_text().strip()]
    return [_text(line.get_label()) for line in ax.get_lines() if not line.get_label().startswith("_")]


def _panel(ax: Axes) -> str:
    """One panel: its title, what it draws and against what."""
    title = _text(ax.get_title())
    x, y = _text(ax.get_xlabel()), _text(ax.get_ylabel())
    bars = sum(len(c) for c in ax.containers if isinstance(c, BarContainer))
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 1]
    if ax.images:
        kind = "an image" if len(ax.images) == 1 else f"{len(ax.images)} images"
    elif bars:
        kind = f"a bar chart ({bars} bar{'s' if bars != 1 else ''})"
    elif lines:
        kind = "a line chart" if len(lines) == 1 else f"a line chart ({len(lines)} lines)"
    elif ax.collections:
        kind = "a scatter plot"
    else:
        kind = "a chart"
    words = f"{title}: {kind}" if title else kind.capitalize()
    if y and x:
        words += f" of {y} against {x}"
    elif y or x:
        words += f" of {y or x}"
    series = _labels(ax)
    if series:
        words += "; legend: " + ", ".join(series)
    return words


def _is_colorbar(ax: Axes) -> bool:
    return ax.get_label() == "<colorbar>" or hasattr(ax, "_colorbar")


def describe(figure: Figure) -> str:
    """A description of ``figure`` in words, for a screen reader (see the module docstring)."""
    panels = [ax for ax in figure.axes if ax.get_visible() and not _is_colorbar(ax)]
    suptitle = _text(figure._suptitle.get_text()) if figure._suptitle is not None else ""
    head = f"Figure: {suptitle}." if suptitle else "Figure."
    # text written on the figure itself (fig.text: a title line, a sentence under it)
    written = [_text(t.get_text()).rstrip(".") for t in figure.texts
               if t is not figure._suptitle and t.get_text().strip()]
    if written:
        head += " " + ". ".join(written) + "."
    if not panels:
        return head
    images_only = [ax for ax in panels if ax.images and not ax.get_xlabel() and not ax.get_ylabel()]
    if len(panels) > 2 and len(images_only) == len(panels):
        titles = [_text(ax.get_title()) for ax in panels if ax.get_title().strip()]
        shown = ", ".join(titles[:MAX_TITLES])
        if len(titles) > MAX_TITLES:
            shown += f" and {len(titles) - MAX_TITLES} more"
        return f"{head} A grid of {len(panels)} images" + (f", titled: {shown}." if titles else ".")
    if len(panels) == 1:
        return f"{head} {_panel(panels[0])}."
    described = [f"({i}) {_panel(ax)}" for i, ax in enumerate(panels[:MAX_PANELS], 1)]
    more = f" and {len(panels) - MAX_PANELS} more panels" if len(panels) > MAX_PANELS else ""
    return f"{head} {len(panels)} panels: " + "; ".join(described) + more + "."


def _bundle(figure: Figure, include=None, exclude=None) -> tuple[dict, dict]:
    """No data of its own: only the metadata IPython merges with the PNG its inline backend draws."""
    return {}, {"image/png": {"alt": describe(figure)}}


def install(shell=None) -> bool:
    """Attach :func:`describe` to every figure IPython displays (as ``image/png`` ``alt`` metadata).

    Returns False outside IPython (nothing to do). Registered on IPython's mime-bundle formatter,
    which runs before matplotlib's own PNG formatter and is not replaced when the inline backend
    loads.
    """
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        shell = get_ipython()
    if shell is None:
        return False
    shell.display_formatter.mimebundle_formatter.for_type(Figure, _bundle)
    return True
