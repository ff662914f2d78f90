"""FreezeView: the ipywidgets face of :class:`~tlhelpers.simulator.FreezeSim`.

One toggle per block (Frozen blue, Trainable green), Train step, Reset and the two teaching
switches; a block diagram input -> blocks -> loss with the backward path in red; a one-line
summary that says what happened in words; and one figure, rendered to PNG into a
``widgets.Image`` so it swaps without flicker. Only ipywidgets: it runs in JupyterLab, in
Voila, and headless in tests, where ``view.toggles[name].value = True`` and
``view.step_button.click()`` drive it like a learner would.
"""

from __future__ import annotations

import functools
import html
import re

import ipywidgets as widgets

from tlhelpers.simulator import figure
from tlhelpers.simulator.report import Cost, StepReport
from tlhelpers.simulator.sim import FreezeSim

CSS_CLASS = "freeze-view"
#: Toggle colours matched to the diagram and figure (themes differ in their "info" blue).
STYLE = (f"<style>.{CSS_CLASS} .freeze-toggle.mod-info {{background-color:{figure.FROZEN};color:white}}"
         f".{CSS_CLASS} .freeze-toggle.mod-success {{background-color:{figure.TRAINABLE};color:white}}</style>")


def css_name(block: str) -> str:
    """A CSS-class-safe form of a block name (``freeze-toggle-<this>``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", block)


def _shows_errors(handler):
    """Widget callbacks swallow exceptions; show them in the summary instead, then re-raise."""

    @functools.wraps(handler)
    def wrapper(self, *args, **kwargs):
        try:
            return handler(self, *args, **kwargs)
        except Exception as error:
            self.summary.value = (f"<div class='freeze-error' style='color:{figure.GRADIENT}'>"
                                  f"<b>{type(error).__name__}</b>: {html.escape(str(error))}</div>")
            raise

    return wrapper


class FreezeView(widgets.VBox):
    """Toggle blocks of ``sim`` between Frozen and Trainable, step, and see what happened.

    Widgets are attributes so code and tests can drive them: ``toggles`` (block -> ToggleButton,
    ``value=True`` means frozen), ``step_button``, ``reset_button``, ``bn_switch``,
    ``stale_switch``, ``diagram`` (HTML), ``summary`` (HTML) and ``image`` (the figure).
    """

    def __init__(self, sim: FreezeSim, figure_width: float = 10.5):
        if not isinstance(sim, FreezeSim):
            raise TypeError(f"FreezeView needs a FreezeSim, got {type(sim).__name__}; "
                            "try FreezeView(FreezeSim(model))")
        self.sim = sim
        self.figure_width = figure_width
        self._syncing = False
        self.toggles: dict[str, widgets.ToggleButton] = {}
        for name in sim.block_names:
            toggle = widgets.ToggleButton(value=name in sim.frozen, layout=widgets.Layout(width="auto"))
            toggle.add_class("freeze-toggle")
            toggle.add_class(f"freeze-toggle-{css_name(name)}")
            toggle.observe(functools.partial(self._on_toggle, name), names="value")
            self.toggles[name] = toggle
            self._style_toggle(name)
        self.step_button = widgets.Button(description="Train step", icon="play", button_style="warning",
                                          tooltip="One real forward, backward and optimizer step")
        self.reset_button = widgets.Button(description="Reset", icon="undo",
                                           tooltip="Weights, optimizer and step count back to the start")
        self.bn_switch = widgets.Checkbox(
            value=sim.bn_train_when_frozen, indent=False, layout=widgets.Layout(width="auto"),
            description="Keep frozen BatchNorm in train mode (its running statistics drift)")
        self.stale_switch = widgets.Checkbox(
            value=sim.stale_gradients, indent=False, layout=widgets.Layout(width="auto"),
            description="Stale gradients: optimizer built before freezing, "
                        "zero_grad(set_to_none=False), momentum")
        self.diagram = widgets.HTML(layout=widgets.Layout(width="100%", overflow="auto"))
        self.summary = widgets.HTML()
        self.image = widgets.Image(format="png", layout=widgets.Layout(
            width="100%", max_width=f"{round(figure_width * figure.DPI)}px", height="auto"))
        for widget, css in ((self.step_button, "freeze-step"), (self.reset_button, "freeze-reset"),
                            (self.bn_switch, "freeze-bn-switch"), (self.stale_switch, "freeze-stale-switch"),
                            (self.diagram, "freeze-diagram"), (self.summary, "freeze-summary"),
                            (self.image, "freeze-figure")):
            widget.add_class(css)
        self.step_button.on_click(self._on_step)
        self.reset_button.on_click(self._on_reset)
        self.bn_switch.observe(self._on_switch, names="value")
        self.stale_switch.observe(self._on_switch, names="value")

        toggle_row = widgets.HBox(list(self.toggles.values()), layout=widgets.Layout(flex_flow="row wrap"))
        buttons = widgets.HBox([self.step_button, self.reset_button],
                               layout=widgets.Layout(margin="0 24px 0 0"))
        switches = widgets.VBox([self.bn_switch, self.stale_switch])
        controls = widgets.HBox([buttons, switches], layout=widgets.Layout(align_items="center"))
        style = widgets.HTML(STYLE, layout=widgets.Layout(height="0px", margin="0"))
        super().__init__([style, toggle_row, controls, self.diagram, self.summary, self.image])
        self.add_class(CSS_CLASS)
        self.refresh()

    # ------------------------------------------------------------------ callbacks

    @_shows_errors
    def _on_toggle(self, name: str, change: dict) -> None:
        if self._syncing:
            return
        self.sim.set_frozen(name, bool(change["new"]))
        self._style_toggle(name)
        self.refresh()

    @_shows_errors
    def _on_step(self, _button=None) -> None:
        self.step_button.disabled = True
        try:
            self.sim.step()
        finally:
            self.step_button.disabled = False
        self.refresh()

    @_shows_errors
    def _on_reset(self, _button=None) -> None:
        self.sim.reset()
        self.refresh()

    @_shows_errors
    def _on_switch(self, _change=None) -> None:
        if self._syncing:
            return
        self.sim.bn_train_when_frozen = self.bn_switch.value
        self.sim.stale_gradients = self.stale_switch.value
        self.refresh()

    # ------------------------------------------------------------------ drawing

    def refresh(self) -> None:
        """Bring every widget in line with the simulator (also after changing ``sim`` directly)."""
        self._syncing = True
        try:
            for name, toggle in self.toggles.items():
                toggle.value = name in self.sim.frozen
                self._style_toggle(name)
            self.bn_switch.value = self.sim.bn_train_when_frozen
            self.stale_switch.value = self.sim.stale_gradients
        finally:
            self._syncing = False
        cost, baseline = self.sim.cost(), self.sim.baseline()
        report = self.sim.history[-1] if self.sim.history else None
        fig = figure.panels_figure(self.sim.block_names, self.sim.frozen, report, cost, baseline,
                                   self.sim.trainable_params(), self.sim.total_params(), self.figure_width)
        png = figure.to_png(fig)
        # Everything is computed first, then swapped in together; the summary (with the step
        # number) goes last, so when it shows the new step the figure already does too.
        self.diagram.value = diagram_html(self.sim.block_names, self.sim.frozen, cost)
        self.image.value = png
        self.summary.value = summary_html(self.sim, report, cost, baseline)

    def _style_toggle(self, name: str) -> None:
        toggle = self.toggles[name]
        frozen = toggle.value
        toggle.description = f"{name}: {'Frozen' if frozen else 'Trainable'}"
        toggle.icon = "lock" if frozen else "unlock"
        toggle.button_style = "info" if frozen else "success"
        toggle.tooltip = (f"{name} is frozen: no gradient for its weights. Click to train it." if frozen
                          else f"{name} is trainable: its weights get gradients. Click to freeze it.")


def _box(label: str, background: str, color: str, detail: str = "") -> str:
    sub = f"<div style='font-size:10px;font-weight:normal;opacity:.9'>{detail}</div>" if detail else ""
    return (f"<div style='background:{background};color:{color};border-radius:6px;padding:4px 8px;"
            "font-weight:600;font-size:12px;text-align:center;white-space:nowrap'>"
            f"{html.escape(label)}{sub}</div>")


def diagram_html(names: list[str], frozen: set[str], cost: Cost) -> str:
    """input -> blocks -> loss as an HTML table; the backward path is a red line beneath.

    The red line starts at the loss and runs back to the earliest block that needs a gradient;
    frozen blocks on it are marked "pass-through", and the block where backward stops is marked.
    """
    items = ["input", *names, "loss"]
    reached = set(cost.flow)
    earliest = min((items.index(n) for n in reached), default=None)
    red = figure.GRADIENT
    top, bottom = [], []
    for index, item in enumerate(items):
        if index:
            on_path = earliest is not None and index > earliest
            top.append("<td style='color:#777;padding:0 2px'>&#8594;</td>")
            bottom.append(f"<td style='border-top:3px solid {red if on_path else 'transparent'}'></td>")
        if item in ("input", "loss"):
            top.append(f"<td>{_box(item, '#eeeeee', '#333')}</td>")
        else:
            state = "frozen" if item in frozen else "trainable"
            colour = figure.FROZEN if item in frozen else figure.TRAINABLE
            top.append(f"<td>{_box(item, colour, 'white', state)}</td>")
        on_path = earliest is not None and index >= earliest
        if item == "loss":
            note = f"<span style='color:{red}'>backward starts</span>" if reached else ""
        elif item in cost.pass_through:
            note = f"<span style='color:{red}'>pass-through</span>"
        elif item in reached:
            note = f"<span style='color:{red}'>{'&#9664; ' if index == earliest else ''}gradient</span>"
        elif item == cost.stop_at:
            note = "<span style='color:#777'>&#10005; stops here</span>"
        else:
            note = ""
        line = red if on_path else "transparent"
        bottom.append(f"<td style='border-top:3px solid {line};font-size:10px;text-align:center;"
                      f"padding-top:2px;white-space:nowrap'>{note}</td>")
    return ("<div style='overflow-x:auto'><table style='border-collapse:collapse;margin:4px 0'>"
            f"<tr>{''.join(top)}</tr><tr>{''.join(bottom)}</tr></table>"
            "<div style='font-size:11px;color:#555'>Forward pass: left to right, input to loss. "
            f"<span style='color:{red}'>Backward pass (red): from the loss back to the earliest block "
            "that needs a gradient.</span></div></div>")


def summary_html(sim: FreezeSim, report: StepReport | None, cost: Cost, baseline: Cost) -> str:
    """What happened, in words: step number, loss, the gradient path, states, cost, warnings."""
    names = sim.block_names
    frozen = [n for n in names if n in sim.frozen]
    trainable = [n for n in names if n not in sim.frozen]
    step = sim.step_count
    lines = []
    if report is None:
        lines.append(f"<b>Step <span class='freeze-step-number'>{step}</span></b>: nothing trained yet. "
                     "Choose what to freeze, then press <b>Train step</b>.")
    else:
        timing = f"step took {report.step_ms:.0f} ms"
        if report.measure_ms:
            timing += f" (+{report.measure_ms:.0f} ms measuring compute and memory for this configuration)"
        lines.append(f"<b>Step <span class='freeze-step-number'>{step}</span></b>: "
                     f"loss {report.loss:.3f}, {timing}.")
    sentence = html.escape(cost.flow_sentence("→"))
    lines.append(f"<span class='freeze-flow' style='color:{figure.GRADIENT}'>"
                 f"{sentence[0].upper()}{sentence[1:]}.</span>")
    lines.append(f"<span style='color:{figure.FROZEN}'><b>Frozen:</b> "
                 f"<span class='freeze-frozen-list'>{', '.join(frozen) or 'none'}</span></span> &nbsp; "
                 f"<span style='color:{figure.TRAINABLE}'><b>Trainable:</b> "
                 f"<span class='freeze-trainable-list'>{', '.join(trainable) or 'none'}</span></span>")
    trainable_now, total = sim.trainable_params(), sim.total_params()
    lines.append(f"Trainable parameters {figure.human(trainable_now)} of {figure.human(total)} "
                 f"({figure.share_text(trainable_now, total)}); backward compute "
                 f"{figure.share_text(cost.backward_flops, baseline.backward_flops)} and saved activations "
                 f"{figure.share_text(cost.saved_activation_bytes, baseline.saved_activation_bytes)} "
                 "of training everything.")
    lines.extend(_warnings(sim, report))
    return "<div style='font-size:13px;line-height:1.5'>" + "<br>".join(lines) + "</div>"


def _warnings(sim: FreezeSim, report: StepReport | None) -> list[str]:
    notes = []
    if report is not None and report.moved_while_frozen:
        notes.append(f"<b style='color:{figure.GRADIENT}'>&#9888; Frozen but moved: "
                     f"{', '.join(report.moved_while_frozen)}.</b> "
                     "The optimizer still holds them, zero_grad(set_to_none=False) left a zero gradient, "
                     "and momentum kept pushing. Build the optimizer from the trainable parameters only.")
    elif sim.stale_gradients:
        notes.append("Stale gradients are on: a block moves while frozen only if it trained before. "
                     "Train a step, freeze a block, and step again.")
    if report is not None and report.drifted_while_frozen:
        notes.append(f"<b style='color:{figure.DRIFT}'>&#9888; BatchNorm statistics drifted in frozen "
                     f"blocks: {', '.join(report.drifted_while_frozen)}.</b> In train mode BatchNorm "
                     "updates its running "
                     "mean and variance even with requires_grad=False; put frozen BatchNorm in eval mode.")
    elif sim.bn_train_when_frozen and not sim.frozen:
        notes.append("Frozen BatchNorm stays in train mode: freeze a block and step to see its "
                     "statistics drift.")
    return notes
