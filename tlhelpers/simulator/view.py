"""FreezeView: the simulator's face, an anywidget over :class:`~tlhelpers.simulator.FreezeSim`.

The browser side (``static/freeze_view.js`` and ``.css``, shipped in the package: no CDN, no
build step) draws the blocks, the backward path, the costs and the reports in SVG. It gets the
per-block cost table once, so a toggle, a preset or a switch redraws in the browser at once and
only then tells the kernel (the ``frozen`` and ``switches`` traits). A real step, ten steps, an
A/B run, the gradient ranking, a new architecture or a pasted scenario are messages to the
kernel, handled here by :meth:`FreezeView.handle`; the results come back as traits.

Everything the widget shows is a trait, so tests drive it headless: set ``view.frozen``, call
``view.handle({"action": "step"})``, read ``view.report``. Runs in JupyterLab, Notebook 7,
VS Code, Colab and Voila (``notebooks/simulator.ipynb``, where the scenario lives in the page
address). Readers without a kernel (GitHub) get a PNG of the same state with the output.
"""

from __future__ import annotations

import base64
import functools
import itertools
import os
from pathlib import Path

import anywidget
import traitlets

from tlhelpers.simulator import architectures, scenario, vocabulary
from tlhelpers.simulator.palette import PALETTE
from tlhelpers.simulator.report import StepReport
from tlhelpers.simulator.sim import FreezeSim

STATIC = Path(__file__).resolve().parent / "static"
#: Loss points kept for the curve (a learner will not click more steps than this).
HISTORY_LIMIT = 500


def report_json(report: StepReport) -> dict:
    """A step report as the browser draws it (camelCase keys, blocks in forward order)."""
    return {
        "step": report.step, "loss": report.loss, "stepMs": report.step_ms, "measureMs": report.measure_ms,
        "flow": list(report.flow), "stopAt": report.stop_at, "passThrough": list(report.cost.pass_through),
        "backwardFlops": report.backward_flops, "saved": report.saved_activation_bytes,
        "frozen": list(report.frozen), "movedWhileFrozen": report.moved_while_frozen,
        "driftedWhileFrozen": report.drifted_while_frozen,
        "blocks": [{"name": b.name, "state": b.state, "frozen": b.frozen, "gradNorm": b.grad_norm,
                    "weightDelta": b.weight_delta, "bnDrift": b.bn_drift, "passThrough": b.pass_through,
                    "distance": b.distance, "relativeGrad": b.relative_grad,
                    "trainableParams": b.trainable_params, "movedWhileFrozen": b.moved_while_frozen,
                    "driftWhileFrozen": b.frozen and not b.trainable_params and b.bn_drift > 0}
                   for b in report.blocks.values()],
    }


def block_rows(sim: FreezeSim) -> list[dict]:
    """What the browser needs to know of each block to redraw any configuration on its own."""
    head = sim.head_block
    rows = []
    for name in sim.block_names:
        params = sim.block_parameters(name)
        norm = sim.norm_parameter_names(name)
        rows.append({"name": name, "params": sum(p.numel() for p in params.values()),
                     "bytes": sum(p.numel() * p.element_size() for p in params.values()),
                     "normParams": sum(params[p].numel() for p in norm),
                     "normBytes": sum(params[p].numel() * params[p].element_size() for p in norm),
                     "hasBatchNorm": sim.has_batchnorm(name), "head": name == head})
    return rows


def complete_table(sim: FreezeSim) -> dict:
    """The cost table with every case any toggle, preset or switch can reach (all switch settings
    measured once: well under a second for the course's networks), as the browser draws it.

    With it the browser never waits for a measurement after a switch, and a page without a
    kernel (``make book``'s static site, which renders the state stored in the notebook) can
    redraw every configuration. The simulator's switches are left as they were.
    """
    names = list(scenario.SWITCHES.values())
    saved = {name: getattr(sim, name) for name in names}
    try:
        for values in itertools.product((False, True), repeat=len(names)):
            for name, value in zip(names, values, strict=True):
                setattr(sim, name, value)
            sim.cost_table()
    finally:
        for name, value in saved.items():
            setattr(sim, name, value)
    return sim.cost_table().to_json()


def _reports_errors(handler):
    """Show an exception in the widget (the ``error`` trait), then re-raise it for the kernel log."""

    @functools.wraps(handler)
    def wrapper(self, *args, **kwargs):
        try:
            result = handler(self, *args, **kwargs)
            self.error = ""
            return result
        except Exception as error:
            self.error = f"{type(error).__name__}: {error}"
            raise

    return wrapper


class FreezeView(anywidget.AnyWidget):
    """Toggle blocks of ``sim`` between frozen and trainable, train, compare, share.

    ``arch`` names the torchvision architecture for the picker and the scenario string
    (found from the model when left out); ``weights_note`` says in words what weights the
    model has. ``url_state=True`` keeps the scenario in the page address when the page is a
    Voila dashboard (see :meth:`from_scenario`).
    """

    _esm = STATIC / "freeze_view.js"
    _css = STATIC / "freeze_view.css"

    arch = traitlets.Unicode("").tag(sync=True)
    arch_options = traitlets.List(traitlets.Dict()).tag(sync=True)
    weights_note = traitlets.Unicode("").tag(sync=True)
    blocks = traitlets.List(traitlets.Dict()).tag(sync=True)
    table = traitlets.Dict().tag(sync=True)
    frozen = traitlets.List(traitlets.Unicode()).tag(sync=True)
    switches = traitlets.Dict().tag(sync=True)
    optimizer = traitlets.Dict().tag(sync=True)
    seed = traitlets.Int(0).tag(sync=True)
    report = traitlets.Dict().tag(sync=True)
    history = traitlets.List(traitlets.Dict()).tag(sync=True)
    ranking = traitlets.Dict().tag(sync=True)
    pinned = traitlets.Dict().tag(sync=True)
    comparison = traitlets.Dict().tag(sync=True)
    scenario = traitlets.Unicode("").tag(sync=True)
    busy = traitlets.Unicode("").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    url_state = traitlets.Bool(False).tag(sync=True)
    palette = traitlets.Dict(PALETTE).tag(sync=True)
    vocabulary = traitlets.Dict(vocabulary.for_browser()).tag(sync=True)
    #: Non-empty only in a static page with no kernel behind the widget (the course website sets
    #: it when it saves the widget's state): the browser then disables every control that needs
    #: the kernel, shows this sentence next to them, and reads a ``#scenario=`` page address.
    offline_note = traitlets.Unicode("").tag(sync=True)

    def __init__(self, sim: FreezeSim, *, arch: str | None = None, weights_note: str | None = None,
                 url_state: bool = False, **kwargs):
        if not isinstance(sim, FreezeSim):
            raise TypeError(f"FreezeView needs a FreezeSim, got {type(sim).__name__}; "
                            "try FreezeView(FreezeSim(model))")
        super().__init__(url_state=url_state, arch_options=architectures.choices(), **kwargs)
        self._syncing = False
        self._use(sim, arch or architectures.architecture_name(sim.model) or type(sim.model).__name__,
                  weights_note or "the weights of the model passed to FreezeSim (it works on a copy)")
        self.on_msg(self._on_message)

    @classmethod
    def from_scenario(cls, text: str | None = None, **kwargs) -> FreezeView:
        """A simulator set up as the scenario string ``text`` says (see :mod:`.scenario`).

        With ``text=None`` the scenario comes from the page address when Voila serves the
        notebook (``?arch=...&frozen=...``), else MobileNetV2 with its ImageNet weights,
        training its head only. The view then keeps the address up to date.
        """
        if text is None:
            text = scenario.from_query(os.environ.get("QUERY_STRING"))
        arch, state = scenario.decode(text) if text else (None, {})
        loaded = architectures.load(arch or architectures.DEFAULT_ARCH)
        sim = FreezeSim(loaded.model, seed=state.get("seed", 0), image_size=loaded.image_size)
        sim.load_state({"frozen": [b for b in sim.block_names if b != sim.head_block], **state})
        kwargs.setdefault("url_state", True)
        return cls(sim, arch=loaded.name, weights_note=loaded.note, **kwargs)

    # ------------------------------------------------------------------ kernel side of the traits

    def _use(self, sim: FreezeSim, arch: str, note: str) -> None:
        """Show ``sim``: every trait from scratch (a new simulator or architecture)."""
        self.sim = sim
        with self.hold_sync():
            self._syncing = True
            try:
                self.arch, self.weights_note, self.blocks = arch, note, block_rows(sim)
                self.table = complete_table(sim)
                self._push_configuration()
                self.report, self.history, self.ranking = {}, [], {}
                self.pinned, self.comparison = {}, {}
            finally:
                self._syncing = False

    def _push_configuration(self) -> None:
        state = self.sim.state()
        self.frozen = state["frozen"]
        self.switches = {key: state[key] for key in scenario.SWITCHES.values()}
        self.optimizer = {"name": state["optimizer"], "lr": state["lr"], "momentum": state["momentum"],
                          "slots": self.sim.optimizer_slots()}
        self.seed = state["seed"]
        self.scenario = scenario.encode(self.arch, state)

    @traitlets.observe("frozen")
    def _frozen_changed(self, change) -> None:
        if not self._syncing:
            self._apply_configuration(frozen=change["new"])

    @traitlets.observe("switches")
    def _switches_changed(self, change) -> None:
        if not self._syncing:
            self._apply_configuration(switches=change["new"])

    @_reports_errors
    def _apply_configuration(self, frozen=None, switches=None) -> None:
        """A toggle, preset or switch from the browser: apply it to the simulator (weights stay).

        The browser has drawn it already; only a switch that needs a case not measured yet
        (frozen BatchNorm in train mode, normalisation affine training) sends a new table.
        """
        sim = self.sim
        if frozen is not None:
            sim._check_blocks(list(frozen))
            for name in sim.block_names:
                if (name in frozen) != (name in sim.frozen):
                    sim.set_frozen(name, name in frozen)
        if switches is not None:
            unknown = sorted(set(switches) - set(scenario.SWITCHES.values()))
            if unknown:
                raise ValueError(f"Unknown switches {unknown}")
            sim.bn_train_when_frozen = switches.get("bn_train_when_frozen", sim.bn_train_when_frozen)
            sim.stale_gradients = switches.get("stale_gradients", sim.stale_gradients)
            sim.train_norm_affine = switches.get("train_norm_affine", sim.train_norm_affine)
            if sim.needs_measuring():
                self.busy = "Measuring the blocks in the new case…"
            table = sim.cost_table().to_json()
            self.busy = ""
            if table != self.table:
                self.table = table
        self.scenario = scenario.encode(self.arch, sim.state())

    # ------------------------------------------------------------------ messages from the browser

    def _on_message(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and "action" in content:
            try:
                self.handle(content)
            finally:
                self.send({"kind": "done", "action": content.get("action")})

    @_reports_errors
    def handle(self, message: dict) -> None:
        """Do what a button asked: ``{"action": "step" | "train" | "reset" | "rank" | "pin" |
        "compare" | "arch" | "scenario" | "settings", ...}``."""
        action = message.get("action")
        handlers = {"step": self._step, "train": self._train, "reset": self._reset, "rank": self._rank,
                    "pin": self._pin, "compare": self._compare, "arch": self._arch,
                    "scenario": self._scenario, "settings": self._settings}
        if action not in handlers:
            raise ValueError(f"Unknown action {action!r}; one of {', '.join(handlers)}")
        handlers[action](message)

    def _record(self, report: StepReport) -> None:
        point = {"step": report.step, "loss": report.loss,
                 "distances": [b.distance for b in report.blocks.values()]}
        with self.hold_sync():
            self.history = (self.history + [point])[-HISTORY_LIMIT:]
            self.report = report_json(report)

    def _step(self, _message) -> None:
        self._record(self.sim.step())

    def _train(self, message) -> None:
        steps = message.get("steps", 10)
        self.sim.train(steps, on_step=self._record)

    def _reset(self, _message) -> None:
        self.sim.reset()
        with self.hold_sync():
            self.report, self.history, self.ranking, self.comparison = {}, [], {}, {}

    def _rank(self, _message) -> None:
        self.ranking = {"step": self.sim.step_count, "values": self.sim.relative_gradients()}

    def _summary(self, state: dict, label: str) -> dict:
        """Costs of a scenario state, summed from the table (the same numbers the browser shows)."""
        states = self.sim.states_for(state["frozen"], state["bn_train_when_frozen"],
                                     state["train_norm_affine"])
        cost = self.sim.cost(states)
        return {"label": label, "state": state, "scenario": scenario.encode(self.arch, state),
                "backwardFlops": cost.backward_flops,
                "memory": sum(self.sim.training_memory(states).values()),
                "trainable": self.sim.trainable_params(states), "flow": cost.flow_sentence()}

    def _label(self, state: dict) -> str:
        names = self.sim.block_names
        trainable = [n for n in names if n not in state["frozen"]]
        text = "trains " + (", ".join(trainable) if trainable else "nothing")
        if state["train_norm_affine"]:
            text += " + norm scale/shift everywhere"
        return text

    def _pin(self, _message) -> None:
        state = self.sim.state()
        self.pinned = self._summary(state, self._label(state))
        self.comparison = {}

    def _compare(self, message) -> None:
        if not self.pinned:
            raise ValueError("Pin a configuration as A first, then change it and run A vs B")
        steps = int(message.get("steps", 10))
        current = self.sim.state()
        runs = {}
        for key, state in (("a", self.pinned["state"]), ("b", current)):
            trial_state = {k: v for k, v in state.items() if k != "seed"}
            reports = self.sim.trial(trial_state, steps)
            summary = self._summary(state, self._label(state))
            summary.update(losses=[r.loss for r in reports], finalLoss=reports[-1].loss)
            runs[key] = summary
        self.comparison = {"steps": steps, **runs}

    def _arch(self, message) -> None:
        name = message.get("name")
        self.busy = f"Loading {name}…"
        try:
            loaded = architectures.load(name)
            old = self.sim.state()
            sim = FreezeSim(loaded.model, seed=old["seed"], image_size=loaded.image_size)
            sim.load_state({"frozen": [b for b in sim.block_names if b != sim.head_block],
                            **{k: v for k, v in old.items() if k not in ("frozen", "seed")}})
            self._use(sim, loaded.name, loaded.note)
        finally:
            self.busy = ""

    def _scenario(self, message) -> None:
        arch, state = scenario.decode(message.get("text", ""))
        if arch and arch != self.arch:
            self._arch({"name": arch})
        self.sim.load_state(state)
        with self.hold_sync():
            self._syncing = True
            try:
                self.table = complete_table(self.sim)
                self._push_configuration()
                self.report, self.history, self.ranking, self.comparison = {}, [], {}, {}
            finally:
                self._syncing = False

    def _settings(self, message) -> None:
        change = {}
        if "optimizer" in message:
            change["optimizer"] = message["optimizer"]
        if "seed" in message:
            change["seed"] = int(message["seed"])
        self.sim.load_state(change)
        with self.hold_sync():
            self._syncing = True
            try:
                self._push_configuration()
                self.report, self.history, self.ranking, self.comparison = {}, [], {}, {}
                self.table = complete_table(self.sim)
            finally:
                self._syncing = False

    # ------------------------------------------------------------------ readers without a kernel

    def _repr_mimebundle_(self, **kwargs):
        """The widget, plus a PNG of the same state for readers without widgets (GitHub)."""
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is None:
            return None
        data, metadata = bundle
        from tlhelpers import figure_text
        from tlhelpers.simulator.figure import snapshot_figure, to_png

        figure = snapshot_figure(self.sim, self.arch, self.weights_note)
        data["image/png"] = base64.b64encode(to_png(figure)).decode()
        metadata = {**(metadata or {}), "image/png": {"alt": figure_text.describe(figure)}}
        return data, metadata
