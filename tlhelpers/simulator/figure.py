"""The simulator as a static picture: the widget's look, drawn with matplotlib, for readers
without a kernel (GitHub, nbviewer) and for ``notebooks/figures/freeze_simulator.png``.

The layout follows ``static/freeze_view.js``: the blocks from input to loss with the backward
path in vermillion (frozen blocks blue and hatched, trainable ones green, every state also in
words), the flow sentence, the three cost bars against training everything, the per-block
table (gradient, weight change, BatchNorm drift, distance moved since the start) and the
loss curve. Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no GUI backend) and
need no widget library: ``python -m tlhelpers.simulator snapshot`` runs without ipywidgets.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

import tlhelpers.simulator.vocabulary as vocabulary  # the module itself, not the package face
from tlhelpers.simulator.palette import PALETTE
from tlhelpers.simulator.report import describe_flow

if TYPE_CHECKING:
    from tlhelpers.simulator.sim import FreezeSim

FROZEN, TRAINABLE, GRADIENT = PALETTE["frozen"], PALETTE["trainable"], PALETTE["gradient"]
DRIFT, MUTED, BASELINE, INK = PALETTE["drift"], PALETTE["muted"], PALETTE["baseline"], PALETTE["ink"]
STATE_WORDS = vocabulary.STATE_WORDS
DPI = 80  # figure inches * DPI = pixels; small enough for a notebook output
ROUNDED = "round,pad=0,rounding_size=8"


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (with an optional unit): numbers a learner can read at a glance.
    The widget's ``human`` in freeze_view.js gives the same text."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            scaled = value / factor
            return f"{scaled:.3g} {prefix}{unit}" if scaled < 100 else f"{round(scaled)} {prefix}{unit}"
    return f"{round(value)} {unit}".rstrip()


def share_text(value: float, reference: float) -> str:
    """A share as a learner reads it: never "100%" unless it is all, never "0%" unless none, and
    one decimal below 10% (a head of 0.57% of the weights reads "0.6%", not "1%")."""
    if not reference:
        return "n/a"
    share = value / reference
    if 0.995 <= share < 1:
        return ">99%"
    if 0 < share < 0.0005:
        return "<0.1%"
    tenths = math.floor(share * 1000 + 0.5)
    if 0 < tenths < 100:
        return f"{tenths / 10:.1f}%"
    return f"{math.floor(share * 100 + 0.5)}%"


def _width(name: str, endpoint: bool) -> float:
    return max(64.0, 12 + 7.2 * max(len(name), 0 if endpoint else 9))


def draw_diagram(ax, names: Sequence[str], states: dict[str, str], flow: Sequence[str], stop_at: str | None,
                 pass_through: Sequence[str]) -> None:
    """input -> blocks -> loss, with the backward path: the widget's SVG, in pixels (y down)."""
    items = ["input", *names, "loss"]
    widths = [_width(item, item in ("input", "loss")) for item in items]
    gap, top, height, line_y = 22.0, 24.0, 46.0, 92.0
    xs, x = [], 6.0
    for w in widths:
        xs.append(x)
        x += w + gap
    total = x - gap + 6
    ax.set_xlim(0, total)
    ax.set_ylim(128, 0)
    ax.axis("off")
    ax.text(6, 13, "forward: input → loss", fontsize=8, color=MUTED, va="center")
    on_path, passing = set(flow), set(pass_through)
    for i, item in enumerate(items):
        cx = xs[i] + widths[i] / 2
        if i:
            ax.annotate("", (xs[i] - 3, top + height / 2), (xs[i] - gap + 2, top + height / 2),
                        arrowprops=dict(arrowstyle="-|>", color="#8a8a8a", lw=1.2, shrinkA=0, shrinkB=0))
        if item in ("input", "loss"):
            ax.add_patch(FancyBboxPatch((xs[i], top), widths[i], height, boxstyle=ROUNDED,
                                        facecolor="#f2f2f2", edgecolor="#9a9a9a"))
            ax.text(cx, top + height / 2, item, ha="center", va="center", fontsize=9, fontweight="bold",
                    color="#333333")
            continue
        state = states[item]
        face = TRAINABLE if state == "t" else FROZEN
        edge = GRADIENT if item in on_path else (DRIFT if state == "d" else face)
        ax.add_patch(FancyBboxPatch((xs[i], top), widths[i], height, boxstyle=ROUNDED, facecolor=face,
                                    edgecolor=edge, linewidth=2.2 if item in on_path else 1.5))
        if state != "t":  # hatched, as in the widget: frozen is not told by colour alone
            ax.add_patch(FancyBboxPatch((xs[i], top), widths[i], height, boxstyle=ROUNDED, facecolor="none",
                                        edgecolor="none", hatch="//", hatchcolor=(0, 0, 0, 0.28), linewidth=0))
        if state == "a":
            ax.add_patch(Rectangle((xs[i], top + height - 9), widths[i], 9, facecolor=TRAINABLE,
                                   edgecolor="none"))
        label = "black" if state == "t" else "white"   # 4.5:1 or more on each fill, as in the widget
        ax.text(cx, top + 17, item, ha="center", va="center", fontsize=9, fontweight="bold", color=label)
        word = ("❄ " if state != "t" else "") + STATE_WORDS[state].replace("frozen, ", "")
        ax.text(cx, top + 32, word, ha="center", va="center", fontsize=7.5, color=label)
        note = None
        if item in passing:
            note = ("pass-through", GRADIENT, "bold", "normal")
        elif item in on_path:
            note = ("∇ weights", GRADIENT, "bold", "normal")
        elif item == stop_at:
            note = ("✕ stops here", MUTED, "normal", "italic")
        if note:
            ax.text(cx, line_y + 17, note[0], ha="center", va="center", fontsize=7.5, color=note[1],
                    fontweight=note[2], style=note[3])
    end = xs[-1] + widths[-1] / 2
    if flow:
        earliest = items.index(flow[-1])
        ax.add_patch(FancyArrowPatch((end, line_y), (xs[earliest] + 4, line_y), arrowstyle="-|>",
                                     mutation_scale=12, color=GRADIENT, linewidth=2.6, shrinkA=0, shrinkB=0))
        ax.text(end, line_y - 7, "backward", ha="right", va="center", fontsize=7.5, color=GRADIENT,
                fontweight="bold")
    else:
        ax.text(end, line_y, "no backward pass: nothing trains", ha="right", va="center", fontsize=7.5,
                color=MUTED, style="italic")


def _cost_rows(ax, rows: list[tuple[str, float, float, str, str]]) -> None:
    ax.axis("off")
    ax.set_xlim(0, 1)
    ax.set_ylim(len(rows) + 0.2, -0.8)
    ax.text(0, -0.45, "This configuration vs. training everything", fontsize=9, fontweight="bold",
            va="center", color=INK)
    for y, (label, value, reference, unit, detail) in enumerate(rows):
        share = min(1.0, value / reference) if reference else 0.0
        ax.text(0, y + 0.1, label, fontsize=8.5, va="center", color=INK)
        ax.add_patch(Rectangle((0.2, y - 0.18), 0.28, 0.56, facecolor=BASELINE, edgecolor="none"))
        colour = GRADIENT if "compute" in label else TRAINABLE
        ax.add_patch(Rectangle((0.2, y - 0.18), 0.28 * share, 0.56, facecolor=colour, edgecolor="none"))
        text = f"{share_text(value, reference)}: {human(value, unit)} of {human(reference, unit)}"
        ax.text(0.5, y + 0.1, text + (f" ({detail})" if detail else ""), fontsize=8, va="center", color=INK)


def _bar(ax, x: float, y: float, width: float, share: float, colour: str) -> None:
    ax.add_patch(Rectangle((x, y - 0.3), width, 0.6, facecolor=BASELINE, edgecolor="none"))
    share = max(0.0, min(1.0, share))
    ax.add_patch(Rectangle((x, y - 0.3), width * share, 0.6, facecolor=colour, edgecolor="none"))


def _short(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    return f"{value:.2e}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.3g}"


def _block_table(ax, names: Sequence[str], states: dict[str, str], sim: FreezeSim) -> None:
    ax.axis("off")
    rows = len(names)
    ax.set_xlim(0, 100)
    ax.set_ylim(rows + 0.6, -1.2)
    headers = [(0, "block"), (17, "state"), (33, "‖gradient‖"), (52, "‖Δ weights‖ this step"),
               (72, "‖Δ BN mean‖"), (86, "moved since start")]
    for x, text in headers:
        ax.text(x, -0.6, text, fontsize=7.5, fontweight="bold", va="center", color=INK)
    report = sim.history[-1] if sim.history else None
    rows = list(report.blocks.values()) if report else []
    grads = [b.grad_norm or 0 for b in rows] or [0]
    changes = [b.weight_delta for b in rows] + [b.bn_drift for b in rows] or [0]
    top_grad, top_change = max(grads), max(changes)
    paths = {name: [r.blocks[name].distance for r in sim.history] for name in names}
    top_distance = max([v for p in paths.values() for v in p] + [0])
    for y, name in enumerate(names):
        state = states[name]
        ax.text(0, y, name, fontsize=8, fontweight="bold", va="center", color=INK)
        ax.text(17, y, STATE_WORDS[state], fontsize=7.5, va="center", fontweight="bold",
                color=TRAINABLE if state == "t" else FROZEN)
        if report is None:
            continue
        row = report.blocks[name]
        share = 0.0
        if row.grad_norm and top_grad:
            share = max(0.04, 1 + math.log10(max(row.grad_norm, top_grad * 1e-4) / top_grad) / 4)
        _bar(ax, 33, y, 8, share, GRADIENT)
        if row.grad_norm is not None:
            grad_text = _short(row.grad_norm)
        else:
            grad_text = "none · pass-through" if row.pass_through else "none"
        ax.text(42, y, grad_text, fontsize=7, va="center", color=INK)
        moved = row.moved_while_frozen
        _bar(ax, 52, y, 8, row.weight_delta / top_change if top_change else 0, GRADIENT if moved else TRAINABLE)
        ax.text(61, y, _short(row.weight_delta) + ("  moved while frozen!" if moved else ""), fontsize=7,
                va="center", color=GRADIENT if moved else INK)
        _bar(ax, 72, y, 6, row.bn_drift / top_change if top_change else 0, DRIFT)
        if row.bn_drift:
            ax.text(79, y, _short(row.bn_drift), fontsize=7, va="center", color=INK)
        values = paths[name]
        colour = TRAINABLE if state == "t" else FROZEN
        if len(values) > 1 and top_distance > 0:
            xs = [86 + 9 * i / (len(values) - 1) for i in range(len(values))]
            ax.plot(xs, [y + 0.3 - 0.6 * v / top_distance for v in values], color=colour, lw=1.3)
        else:
            ax.plot([86, 95], [y + 0.3, y + 0.3], color=colour, lw=1.3)
        ax.text(96, y, _short(values[-1]) if values else "", fontsize=7, va="center", color=INK)


def _loss_curve(ax, sim: FreezeSim) -> None:
    ax.set_title("loss per step", fontsize=8.5, loc="left", color=INK)
    if not sim.history:
        ax.text(0.5, 0.5, "train to see the loss", transform=ax.transAxes, ha="center", va="center", fontsize=8,
                color=MUTED)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    steps = [r.step for r in sim.history]
    losses = [r.loss for r in sim.history]
    ax.plot(steps, losses, color=GRADIENT, lw=2, marker="o", markersize=3)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("step", fontsize=7.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def snapshot_figure(sim: FreezeSim, arch: str | None = None, note: str | None = None,
                    width: float = 11.0) -> Figure:
    """The simulator's current state (configuration, costs, last step, history) as one figure."""
    names = sim.block_names
    states = sim.block_states()
    cost, baseline = sim.cost(), sim.baseline()
    everything = {name: "t" for name in names}
    memory, memory_all = sim.training_memory(), sim.training_memory(everything)
    rows = len(names)
    diagram_w = sum(_width(n, False) + 22 for n in names) + 2 * (64 + 22)
    diagram_h = 1.6 * max(1.0, diagram_w / 880)
    table_h = 0.25 * rows + 0.55
    height = 0.55 + diagram_h + 0.35 + 1.05 + max(table_h, 1.9) + 0.3
    fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white")
    y = height
    title = f"Freeze simulator · {arch or type(sim.model).__name__}"
    if sim.history:
        title += f" · step {sim.step_count}: loss {sim.history[-1].loss:.3f}"
    else:
        title += " · step 0: nothing trained yet"
    fig.text(0.012, 1 - 0.2 / height, title, fontsize=11, fontweight="bold", va="center", color=INK)
    if note:
        fig.text(0.012, 1 - 0.42 / height, note, fontsize=8, va="center",
                 color=GRADIENT if note.startswith("random") else MUTED)
    y -= 0.55
    box = (0.01, (y - diagram_h) / height, 0.98 * min(1.0, diagram_w / 880), diagram_h / height)
    draw_diagram(fig.add_axes(box), names, states, cost.flow, cost.stop_at, cost.pass_through)
    y -= diagram_h
    sentence = describe_flow(cost.flow, cost.stop_at)
    fig.text(0.012, (y - 0.15) / height, sentence[0].upper() + sentence[1:], fontsize=9.5, fontweight="bold",
             color=GRADIENT, va="center")
    y -= 0.35
    detail = (f"activations {human(memory['activations'], 'B')} + gradients {human(memory['gradients'], 'B')}"
              f" + optimizer {human(memory['optimizer'], 'B')}")
    _cost_rows(fig.add_axes((0.012, (y - 1.05) / height, 0.97, 1.0 / height)), [
        ("Trainable parameters", sim.trainable_params(), sim.total_params(), "", ""),
        ("Backward compute", cost.backward_flops, baseline.backward_flops, "FLOP", ""),
        ("Training memory", sum(memory.values()), sum(memory_all.values()), "B", detail)])
    y -= 1.05
    panel_h = max(table_h, 1.9)
    _block_table(fig.add_axes((0.012, (y - panel_h) / height, 0.69, panel_h / height)), names, states, sim)
    _loss_curve(fig.add_axes((0.76, (y - panel_h + 0.35) / height, 0.22, (panel_h - 0.6) / height)), sim)
    return fig


def to_png(fig: Figure, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def snapshot_png(sim: FreezeSim, arch: str | None = None, note: str | None = None, dpi: int = DPI) -> bytes:
    """:func:`snapshot_figure` as PNG bytes."""
    return to_png(snapshot_figure(sim, arch, note), dpi=dpi)


def save_snapshot(sim: FreezeSim, path: str | Path, arch: str | None = None, note: str | None = None,
                  dpi: int = DPI) -> Path:
    """Write the simulator's current state as a PNG (the parent folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(snapshot_png(sim, arch, note, dpi))
    return path
