"""The simulator's offline mode, in a real browser: the widget on a static page with no kernel.

The course website shows the simulator from a saved widget state, with ``offline_note`` set.
Here a tiny static page (served from a temporary folder on 127.0.0.1) imports the package's
own ``freeze_view.js`` as an ES module and renders it over a stand-in model (get, set, on, off,
save_changes, send) holding a real FreezeView's state: MobileNetV2 with its ImageNet weights,
every switch's case measured. No JupyterLab, no Voila, no kernel.

Checked: the kernel's controls are disabled and the note is shown; a toggle, a switch and a
preset redraw the backward path and the costs (equal to FreezeSim's own) without ever asking
the kernel or waiting for it; a ``#scenario=`` address is applied before the first draw (in
part, with a sentence, when it names what a static page cannot change); Copy gives a link that
opens the same configuration; and the view's cleanup leaves no timer, animation frame or model
listener behind (in kernel mode too, with a step waiting for an answer).
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tlhelpers.simulator import FreezeSim, FreezeView, describe_flow
from tlhelpers.simulator.view import complete_table

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the browser_tools fixture skips, or fails under CI, and says why
    Page = expect = None

STATIC = Path(__file__).resolve().parents[2] / "tlhelpers" / "simulator" / "static"
NOTE = "This is a static page: training needs a running kernel. Open the notebook to train."
HEAD_ONLY = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "head_conv"]
URI_COMPONENT_SAFE = "-_.!~*'()"  # what encodeURIComponent leaves alone
#: Every control that asks the kernel for something.
KERNEL_CONTROLS = [".fv-step", ".fv-train", ".fv-reset", ".fv-rank", ".fv-arch", ".fv-optimizer", ".fv-seed",
                   ".fv-pin", ".fv-compare", ".fv-ab-steps", ".fv-paste", ".fv-open"]

#: Before the page's scripts: remember every timeout and animation frame freeze_view.js starts
#: and has not yet seen run or cleared (window.__fvLive), so a test can see what cleanup leaves.
TRACK_TIMERS = """
(() => {
  const live = new Set();
  window.__fvLive = live;
  const fromWidget = () => (new Error().stack || "").includes("freeze_view.js");
  const [setT, clearT, raf, caf] = [window.setTimeout, window.clearTimeout, window.requestAnimationFrame,
                                    window.cancelAnimationFrame];
  window.setTimeout = function (callback, ms, ...rest) {
    const mine = fromWidget();
    const id = setT.call(window, (...args) => { live.delete("t" + id); if (typeof callback === "function") callback(...args); },
                         ms, ...rest);
    if (mine) live.add("t" + id);
    return id;
  };
  window.clearTimeout = (id) => { live.delete("t" + id); return clearT.call(window, id); };
  window.requestAnimationFrame = (callback) => {
    const mine = fromWidget();
    const id = raf.call(window, (now) => { live.delete("f" + id); callback(now); });
    if (mine) live.add("f" + id);
    return id;
  };
  window.cancelAnimationFrame = (id) => { live.delete("f" + id); return caf.call(window, id); };
})();
"""

#: The page: the widget's CSS and ES module, and a model over a state dict (what a static
#: page's widget manager gives it: change events on set, no kernel behind save_changes/send).
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>simulator, offline</title>
<link rel="stylesheet" href="freeze_view.css"></head>
<body><main><div id="widget"></div></main>
<script type="application/json" id="state">STATE</script>
<script type="module">
import widget from "./freeze_view.js";
const state = JSON.parse(document.getElementById("state").textContent);
const handlers = {};
const calls = { send: [], save: 0 };
const model = {
  get: (key) => state[key],
  set: (key, value) => { state[key] = value; for (const f of handlers[`change:${key}`] || []) f(); },
  on: (event, f) => { (handlers[event] ||= []).push(f); },
  off: (event, f) => { handlers[event] = (handlers[event] || []).filter((g) => g !== f); },
  save_changes: () => { calls.save += 1; },
  send: (message) => { calls.send.push(message); },
};
Object.assign(window, { __state: state, __handlers: handlers, __calls: calls });
window.__cleanup = widget.render({ model, el: document.getElementById("widget") });
window.__listeners = () => Object.values(handlers).reduce((n, list) => n + list.length, 0);
</script></body></html>
"""


@pytest.fixture(scope="module")
def sim(pretrained_mobilenet_v2) -> FreezeSim:
    """MobileNetV2 with every switch's cases measured (view.complete_table), at the start (head only trainable)."""
    sim = FreezeSim(pretrained_mobilenet_v2)
    complete_table(sim)
    return sim.load_state({"frozen": HEAD_ONLY, "bn_train_when_frozen": False, "train_norm_affine": False})


def _state(sim: FreezeSim, note: str) -> dict:
    view = FreezeView(sim, arch="mobilenet_v2")
    view.offline_note = note
    state = {k: v for k, v in view.get_state().items() if not k.startswith("_")}
    view.close()
    return state


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site(sim, tmp_path_factory) -> Iterator[str]:
    """A static site on 127.0.0.1: offline.html (offline_note set) and kernel.html (not set)."""
    folder = tmp_path_factory.mktemp("offline-site")
    for name in ("freeze_view.js", "freeze_view.css"):
        shutil.copyfile(STATIC / name, folder / name)
    for page, note in (("offline.html", NOTE), ("kernel.html", "")):
        state = json.dumps(_state(sim, note)).replace("</", "<\\/")
        (folder / page).write_text(PAGE.replace("STATE", state))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _open(page: Page, url: str):
    page.add_init_script(TRACK_TIMERS)
    page.goto(url)
    view = page.locator(".fv")
    expect(view).to_be_visible()
    expect(view.locator(".fv-block")).to_have_count(8)
    return view


def _expected(sim: FreezeSim, frozen: list[str], bn: bool = False, affine: bool = False) -> dict:
    states = sim.states_for(frozen, bn, affine)
    cost = sim.cost(states)
    return {"states": [states[b] for b in sim.block_names], "flow": describe_flow(cost.flow, cost.stop_at),
            "backwardFlops": str(cost.backward_flops), "saved": str(cost.saved_activation_bytes),
            "memory": str(sum(sim.training_memory(states).values())), "trainable": str(sim.trainable_params(states))}


def _drawn(view) -> dict:
    costs = view.locator(".fv-costs")
    return {"states": view.locator(".fv-block").evaluate_all("(bs) => bs.map((b) => b.dataset.state)"),
            "flow": view.locator(".fv-flow").get_attribute("data-sentence"),
            "backwardFlops": costs.get_attribute("data-backward-flops"), "saved": costs.get_attribute("data-saved"),
            "memory": costs.get_attribute("data-memory"), "trainable": costs.get_attribute("data-trainable")}


def _no_kernel_traffic(page: Page) -> None:
    calls = page.evaluate("window.__calls")
    assert calls == {"send": [], "save": 0}, f"offline, nothing may be sent to or saved for a kernel: {calls}"


def _clean_up(page: Page) -> None:
    """Remove the view the way a notebook does; nothing of it may stay scheduled or listening."""
    assert page.evaluate("window.__listeners()") > 0
    page.evaluate("window.__cleanup()")
    assert page.evaluate("[...window.__fvLive]") == [], "a timer or animation frame outlived the view"
    assert page.evaluate("window.__listeners()") == 0, "a model listener outlived the view"


def test_offline_widget_without_a_kernel(site: str, sim: FreezeSim, page: Page, artifacts: Path) -> None:
    view = _open(page, f"{site}/offline.html")
    expect(view).to_have_attribute("data-kernel", "offline")
    note = view.locator(".fv-offline-note")
    expect(note).to_be_visible()
    expect(note).to_have_text(NOTE)
    for selector in KERNEL_CONTROLS:
        control = view.locator(selector)
        expect(control).to_be_disabled()
        expect(control).to_have_class(re.compile(r"\bfv-needs-kernel\b"))
    for selector in (".fv-preset-probe", ".fv-preset-all", ".fv-switch-bn_train_when_frozen", ".fv-copy", ".fv-k"):
        expect(view.locator(selector)).to_be_enabled()
    assert view.locator(".fv-needs-kernel").count() == len(KERNEL_CONTROLS)
    assert _drawn(view) == _expected(sim, HEAD_ONLY)
    view.screenshot(path=str(artifacts / "simulator-offline.png"))

    # A disabled Train step does nothing, even clicked from a script.
    view.locator(".fv-step").evaluate("(button) => button.click()")
    expect(view).to_have_attribute("data-kernel", "offline")

    # A toggle redraws the path and the costs here, from the table: no kernel, no waiting.
    view.locator('.fv-block[data-block="stage5"]').click()
    expect(view.locator('.fv-block[data-block="stage5"]')).to_have_attribute("data-state", "t")
    frozen = [b for b in HEAD_ONLY if b != "stage5"]
    assert _drawn(view) == _expected(sim, frozen)
    assert _drawn(view)["backwardFlops"] != _expected(sim, HEAD_ONLY)["backwardFlops"]
    # A switch (a case the kernel measured before the page was saved) and a preset, the same way.
    view.locator(".fv-switch-bn_train_when_frozen").check()
    assert _drawn(view) == _expected(sim, frozen, bn=True)
    view.locator(".fv-preset-affine").click()
    assert _drawn(view) == _expected(sim, HEAD_ONLY, bn=True, affine=True)
    expect(view).to_have_attribute("data-kernel", "offline")
    expect(view.locator(".fv-measuring")).to_have_count(0)
    expect(view.locator(".fv-unmeasured")).to_have_count(0)
    assert "easuring" not in view.locator(".fv-busy").text_content()
    for selector in KERNEL_CONTROLS:
        expect(view.locator(selector)).to_be_disabled()
    _no_kernel_traffic(page)

    # Copy gives a link: this address without its hash, then #scenario=<encodeURIComponent(scenario)>.
    scenario = view.locator(".fv-scenario").input_value()
    assert scenario == "arch=mobilenet_v2&frozen=" + ",".join(HEAD_ONLY) + \
        "&seed=0&opt=sgd,0.01,0.9&switches=bn_train,norm_affine"
    view.locator(".fv-copy").click()
    link = view.locator(".fv-scenario-link")
    expect(link).to_be_visible()
    expected_link = f"{site}/offline.html#scenario={quote(scenario, safe=URI_COMPONENT_SAFE)}"
    expect(link).to_have_value(expected_link)
    expect(view.locator(".fv-busy")).to_have_text(re.compile("^Link (copied|selected: copy it)$"))
    view.locator('.fv-block[data-block="stem"]').click()   # the shown link follows the configuration
    assert link.input_value() == f"{site}/offline.html#scenario=" + \
        quote(view.locator(".fv-scenario").input_value(), safe=URI_COMPONENT_SAFE)
    _no_kernel_traffic(page)
    _clean_up(page)

    # The copied link opens the same configuration on a new page.
    again = page.context.new_page()
    try:
        shared = _open(again, expected_link)
        expect(shared).to_have_attribute("data-link-scenario", "applied")
        assert _drawn(shared) == _expected(sim, HEAD_ONLY, bn=True, affine=True)
        expect(shared.locator(".fv-scenario")).to_have_value(scenario)
    finally:
        again.close()


def test_a_scenario_in_the_address_is_applied_on_load(site: str, sim: FreezeSim, page: Page) -> None:
    text = "arch=mobilenet_v2&frozen=stem,stage1&seed=0&opt=sgd,0.01,0.9&switches=bn_train"
    view = _open(page, f"{site}/offline.html#scenario={quote(text, safe=URI_COMPONENT_SAFE)}")
    expect(view).to_have_attribute("data-link-scenario", "applied")
    assert _drawn(view) == _expected(sim, ["stem", "stage1"], bn=True)
    assert _drawn(view)["states"][:3] == ["d", "d", "t"]
    expect(view.locator(".fv-switch-bn_train_when_frozen")).to_be_checked()
    expect(view.locator(".fv-scenario")).to_have_value(text)
    assert page.evaluate("window.__state.frozen") == ["stem", "stage1"], "the model holds what is drawn"
    _no_kernel_traffic(page)


def test_a_scenario_the_page_cannot_fully_apply(site: str, sim: FreezeSim, page: Page) -> None:
    # Another seed and optimizer need a kernel; an unknown block is left out; the rest applies.
    text = "arch=mobilenet_v2&frozen=stem,bogus&seed=3&opt=adam,0.001&switches=norm_affine"
    view = _open(page, f"{site}/offline.html#top&scenario={quote(text, safe='')}")
    expect(view).to_have_attribute("data-link-scenario", "partial")
    assert _drawn(view) == _expected(sim, ["stem"], affine=True)
    status = view.locator(".fv-busy")
    for part in ("in part", "bogus", "seed=3", "opt=adam,0.001"):
        expect(status).to_contain_text(part)
    view.locator('.fv-block[data-block="stage1"]').click()    # the learner moves on: the notice goes
    expect(status).to_have_text("")

    # Another architecture: its blocks are not this page's, so only the switches apply.
    other = page.context.new_page()
    try:
        text = "arch=resnet18&frozen=stem,layer1&seed=0&opt=sgd,0.01,0.9&switches=bn_train"
        view = _open(other, f"{site}/offline.html#scenario={quote(text, safe='')}")
        expect(view).to_have_attribute("data-link-scenario", "partial")
        assert _drawn(view) == _expected(sim, HEAD_ONLY, bn=True)
        expect(view.locator(".fv-busy")).to_contain_text("arch=resnet18 is not the model on this page")
    finally:
        other.close()


def test_a_broken_scenario_link_changes_nothing(site: str, sim: FreezeSim, page: Page) -> None:
    view = _open(page, f"{site}/offline.html#scenario=hello")
    expect(view).to_have_attribute("data-link-scenario", "invalid")
    expect(view.locator(".fv-busy")).to_contain_text("could not be read: Not a scenario")
    assert _drawn(view) == _expected(sim, HEAD_ONLY)


def test_kernel_mode_is_unchanged_and_cleans_up_a_waiting_step(site: str, sim: FreezeSim, page: Page) -> None:
    """Without offline_note: nothing disabled, no note, the hash ignored; a toggle is saved for the
    kernel; Train step waits (dots, the give-up timer) and the cleanup still ends it all."""
    view = _open(page, f"{site}/kernel.html#scenario=" + quote("frozen=stem&switches=bn_train", safe=""))
    expect(view).to_have_attribute("data-kernel", "idle")
    expect(view.locator(".fv-offline-note")).to_have_count(0)
    expect(view.locator(".fv-needs-kernel")).to_have_count(0)
    assert view.get_attribute("data-link-scenario") is None
    for selector in KERNEL_CONTROLS:
        expect(view.locator(selector)).to_be_enabled()
    assert _drawn(view) == _expected(sim, HEAD_ONLY)
    view.locator('.fv-block[data-block="stage5"]').click()
    assert _drawn(view) == _expected(sim, [b for b in HEAD_ONLY if b != "stage5"])
    assert page.evaluate("window.__calls.save") == 1
    view.locator(".fv-step").click()
    expect(view).to_have_attribute("data-kernel", "busy")
    assert page.evaluate("window.__calls.send") == [{"action": "step"}]
    expect(view.locator(".fv-dot").first).to_be_attached()
    expect(view.locator(".fv-busy")).to_have_text("Training one step…")
    _clean_up(page)
