"""Draw what a simulated step did: one matplotlib figure, rendered to PNG bytes.

Three panels side by side, blocks listed input (top) to output (bottom):

1. gradient norm per block (frozen blocks read "no grad"; frozen blocks that backward had to
   pass through to reach trainable blocks below them are marked "pass-through");
2. how far each block's weights moved, with BatchNorm running-mean drift beside it, and any
   "frozen" block that moved anyway flagged in red;
3. compute and memory of this configuration against the all-trainable baseline.

:func:`snapshot_figure` adds the block diagram on top, for the static PNG that readers on
GitHub see. Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no GUI backend),
so drawing works the same in a kernel, a test and a script.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.ticker import NullFormatter

from tlhelpers.simulator.report import Cost, StepReport, describe_flow

if TYPE_CHECKING:
    from tlhelpers.simulator.sim import FreezeSim

FROZEN = "#1f6fb2"      # blue: frozen
TRAINABLE = "#2e8b3e"   # green: trainable
GRADIENT = "#d62728"    # red: the backward path
DRIFT = "#f28e2b"       # orange: BatchNorm statistics
MUTED = "#8a8a8a"
BASELINE = "#e6e6e6"
DPI = 100               # figure inches * DPI = pixels


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.2 M' (with an optional unit): numbers a learner can read at a glance."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            scaled = value / factor
            return f"{scaled:.3g} {prefix}{unit}" if scaled < 100 else f"{scaled:.0f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def share_text(value: float, reference: float) -> str:
    """A share as a learner reads it: never "100%" unless it is all, never "0%" unless none."""
    if not reference:
        return "n/a"
    share = value / reference
    if 0.995 <= share < 1:
        return ">99%"
    if 0 < share < 0.005:
        return "<1%"
    return f"{share:.0%}"


def _style_block_axis(ax, names: Sequence[str], frozen: set[str]) -> None:
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)  # input at the top
    for label, name in zip(ax.get_yticklabels(), names):
        label.set_color(FROZEN if name in frozen else TRAINABLE)
        label.set_fontweight("bold")
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _placeholder(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color=MUTED, fontsize=9)
    ax.set_xticks([])


def _gradient_panel(ax, names: Sequence[str], report: StepReport | None, stale: str) -> None:
    ax.set_title("Gradient norm per block" + stale, fontsize=10, loc="left")
    if report is None:
        _placeholder(ax, "Press Train step\nto run one real step")
        return
    norms = {n: b.grad_norm for n, b in report.blocks.items()}
    present = [v for v in norms.values() if v is not None and v > 0]
    low = min(present) / 4 if present else 1e-3
    high = max(present) * 6 if present else 1.0
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    for y, name in enumerate(names):
        block = report.blocks[name]
        if block.grad_norm is None:
            if block.pass_through:
                ax.axhspan(y - 0.42, y + 0.42, color=GRADIENT, alpha=0.08, lw=0)
                text, color = "no grad · pass-through", GRADIENT
            else:
                text, color = "no grad", FROZEN
            ax.text(low * 1.15, y, text, va="center", fontsize=8, color=color, style="italic")
        else:
            value = max(block.grad_norm, low)
            ax.barh(y, value, left=low, height=0.6, color=TRAINABLE)
            ax.text(value * 1.3, y, f"{block.grad_norm:.3g}", va="center", fontsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short ranges
    ax.set_xlabel("‖gradient‖ (log scale)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def _change_panel(ax, names: Sequence[str], report: StepReport | None, stale: str) -> None:
    ax.set_title("How far it moved this step" + stale, fontsize=10, loc="left")
    if report is None:
        _placeholder(ax, "weights and BatchNorm statistics\nappear here after a step")
        return
    blocks = [report.blocks[n] for n in names]
    top = max([b.weight_delta for b in blocks] + [b.bn_drift for b in blocks] + [1e-12])
    ax.set_xlim(0, top * 1.9)
    for y, block in enumerate(blocks):
        color = GRADIENT if block.moved_while_frozen else TRAINABLE
        if block.weight_delta > 0:
            ax.barh(y - 0.17, block.weight_delta, height=0.32, color=color)
        if block.bn_drift > 0:
            ax.barh(y + 0.17, block.bn_drift, height=0.32, color=DRIFT)
        if block.moved_while_frozen:
            text, text_color, weight = f"{block.weight_delta:.2g}  moved while frozen!", GRADIENT, "bold"
        elif block.weight_delta > 0:
            text, text_color, weight = f"{block.weight_delta:.2g}", "black", "normal"
        else:
            text = "0 (frozen)" if block.frozen else "0"
            text_color, weight = (FROZEN if block.frozen else MUTED), "normal"
        ax.text(block.weight_delta + top * 0.03, y - 0.17, text, va="center", fontsize=8,
                color=text_color, fontweight=weight)
        if block.bn_drift > 0:
            drift = f"{block.bn_drift:.2g}" + ("  BN drifted while frozen!" if block.frozen else "")
            ax.text(block.bn_drift + top * 0.03, y + 0.17, drift, va="center", fontsize=7, color=DRIFT,
                    fontweight="bold" if block.frozen else "normal")
    handles = [Patch(color=TRAINABLE, label="‖Δ weights‖"), Patch(color=DRIFT, label="‖Δ BN running mean‖")]
    ax.legend(handles=handles,
              fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    ax.tick_params(axis="x", labelsize=7)


def _cost_panel(ax, cost: Cost, baseline: Cost, trainable: int, total: int) -> None:
    ax.set_title("Cost vs. everything trainable", fontsize=10, loc="left")
    rows = [("trainable\nparameters", trainable, total, ""),
            ("backward\ncompute", cost.backward_flops, baseline.backward_flops, "FLOP"),
            ("saved\nactivations", cost.saved_activation_bytes, baseline.saved_activation_bytes, "B")]
    for y, (label, value, reference, unit) in enumerate(rows):
        share = value / reference if reference else 0.0
        ax.barh(y, 1.0, height=0.55, color=BASELINE)
        ax.barh(y, share, height=0.55, color=TRAINABLE if share > 0 else MUTED)
        caption = f"{share_text(value, reference)}: {human(value, unit)} of {human(reference, unit)}"
        ax.text(0.0, y - 0.43, caption, va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.4, -0.75)
    ax.set_xlim(0, 1.0)
    ax.set_xticks([0, 0.5, 1.0], ["0", "50%", "100%"], fontsize=7)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


PANEL_MARGINS = {"left": 1.0, "right": 0.15, "bottom": 0.6, "top": 0.35}  # inches


def panels_height(blocks: int) -> float:
    """Height in inches of the three panels for ``blocks`` rows, margins included."""
    return 0.32 * blocks + 1.3


def draw_panels(fig: Figure, names: Sequence[str], frozen: set[str], report: StepReport | None,
                cost: Cost, baseline: Cost, trainable: int, total: int, offset: float = 0.0) -> None:
    """Draw the three panels across ``fig``, in the bottom ``panels_height`` inches above ``offset``.

    ``frozen`` and ``cost`` describe the configuration now; ``report`` is the last step (or
    None), which may have run under another configuration: its panels then say so. The layout
    uses fixed margins rather than a layout engine: drawing is twice as fast, and the figure
    is redrawn on every click.
    """
    width, height = fig.get_size_inches()
    inches = PANEL_MARGINS
    grid = fig.add_gridspec(
        1, 3, width_ratios=[1.15, 1.2, 0.85], wspace=0.35,
        left=inches["left"] / width, right=1 - inches["right"] / width,
        bottom=(offset + inches["bottom"]) / height,
        top=(offset + panels_height(len(names)) - inches["top"]) / height)
    shown_frozen = set(report.frozen) if report is not None else frozen
    stale = "" if report is None or set(report.frozen) == frozen else f" (step {report.step})"
    for index, panel in enumerate((_gradient_panel, _change_panel)):
        ax = fig.add_subplot(grid[0, index])
        _style_block_axis(ax, names, shown_frozen)
        if index == 1:
            ax.set_yticklabels([])
        panel(ax, names, report, stale)
    _cost_panel(fig.add_subplot(grid[0, 2]), cost, baseline, trainable, total)


def panels_figure(names: Sequence[str], frozen: set[str], report: StepReport | None, cost: Cost,
                  baseline: Cost, trainable: int, total: int, width: float = 10.5) -> Figure:
    """The view's figure: the three panels, sized for a notebook cell."""
    fig = Figure(figsize=(width, panels_height(len(names))))
    draw_panels(fig, names, frozen, report, cost, baseline, trainable, total)
    return fig


def draw_diagram(ax, names: Sequence[str], frozen: set[str], cost: Cost) -> None:
    """input -> blocks -> loss as boxes, with the backward path in red (for static images)."""
    items = ["input", *names, "loss"]
    ax.set_xlim(-0.6, len(items) - 0.4)
    ax.set_ylim(-1.25, 0.75)
    ax.axis("off")
    reached = set(cost.flow)
    for x, item in enumerate(items):
        if item in ("input", "loss"):
            face, edge, text_color = "#f2f2f2", MUTED, "#333333"
        else:
            face = FROZEN if item in frozen else TRAINABLE
            edge, text_color = face, "white"
        ax.add_patch(FancyBboxPatch((x - 0.42, -0.3), 0.84, 0.6, boxstyle="round,pad=0.02,rounding_size=0.12",
                                    facecolor=face, edgecolor=edge, linewidth=1.2))
        ax.text(x, 0.0, item, ha="center", va="center", fontsize=8, color=text_color, fontweight="bold")
        if x:
            ax.annotate("", (x - 0.43, 0.0), (x - 0.57, 0.0),
                        arrowprops=dict(arrowstyle="->", color="#555555"))
        if item in cost.pass_through:
            ax.text(x, -0.95, "pass-through", ha="center", va="center", fontsize=7, color=GRADIENT)
        if item == cost.stop_at:
            ax.text(x, -0.6, "stops here", ha="center", va="center", fontsize=7, color=MUTED, style="italic")
    if reached:
        earliest = min(items.index(n) for n in reached)
        ax.add_patch(FancyArrowPatch((len(items) - 1, -0.6), (earliest - 0.3, -0.6), arrowstyle="-|>",
                                     mutation_scale=12, color=GRADIENT, linewidth=2.2))
    sentence = describe_flow(cost.flow, cost.stop_at, "→")
    ax.text(-0.55, 0.62, "forward: input → loss (grey)   backward (red): " + sentence,
            fontsize=8.5, color="#333333", va="center")


def snapshot_figure(names: Sequence[str], frozen: set[str], report: StepReport, cost: Cost,
                    baseline: Cost, width: float = 10.5) -> Figure:
    """The diagram above the three panels, with the step and loss: a static stand-in for the widget."""
    diagram = 1.6  # inches
    panels = panels_height(len(names))
    fig = Figure(figsize=(width, panels + diagram))
    height = panels + diagram
    draw_diagram(fig.add_axes((0.01, panels / height, 0.98, (diagram - 0.35) / height)), names, frozen, cost)
    draw_panels(fig, names, frozen, report, cost, baseline, report.trainable_params, report.total_params)
    fig.suptitle(f"Freeze simulator, step {report.step}: loss {report.loss:.3f}", fontsize=11, x=0.01, y=0.99,
                 ha="left", va="top")
    return fig


def to_png(fig: Figure, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG bytes (for ``widgets.Image`` or a file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def save_snapshot(sim: FreezeSim, path: str | Path, report: StepReport | None = None, dpi: int = DPI) -> Path:
    """Write the diagram and the panels for ``report`` (default: the last step) as a PNG.

    This is the static stand-in for readers who cannot run the widget (GitHub). With no step
    taken yet, one step is run first. Needs matplotlib only, no widget library.
    """
    if report is None:
        report = sim.history[-1] if sim.history else sim.step()
    fig = snapshot_figure(sim.block_names, set(report.frozen), report, report.cost, report.baseline)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_png(fig, dpi=dpi))
    return path
