"""The freeze-toggle simulator in a real browser: JupyterLab (notebook 02 and the standalone
notebook) and the Voila page.

Each surface runs its notebook, then drives the widget as a learner does and checks what is
drawn. A toggle must redraw the path and the costs inside the click itself, before any
message from the kernel has arrived (kernel websocket frames are counted in the page), and
the drawn cost must be the kernel's own sum. Train step must animate the gradient and update
the report. Across the surfaces: keyboard toggling, a preset, ten steps, the gradient
ranking, A/B, the architecture picker and a shared link that reopens the same state.
Notebook 02 is only run and its simulator driven; no other cell of it is looked at.

Screenshots go to test-artifacts/simulator-*.png and the measured latencies to
test-artifacts/simulator-timings.json, which ``benchmarks/run.py --only simulator`` reports.
Times are recorded, never asserted.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
import time
import urllib.request
from pathlib import Path

import axe  # noqa: E402  (tests/ui is on pytest's pythonpath)
import pytest

try:
    from playwright.sync_api import Locator, Page, expect
except ImportError:  # the browser_tools fixture skips, or fails under CI, and says why
    Locator = Page = expect = None

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ["notebooks/02_inspecting_and_freezing.ipynb", "notebooks/simulator.ipynb"]
LOAD_TIMEOUT_MS = 120_000  # JupyterLab's page and a kernel start
RUN_TIMEOUT_MS = 300_000   # a cold kernel, torch import, model load and measuring the blocks
STEP_TIMEOUT_MS = 120_000
TOGGLES = 5                # toggles timed per surface
STEPS = 3                  # steps timed per surface

#: Counts the kernel's websocket frames in the page (JupyterLab and Voila both talk to the
#: kernel over /api/kernels/<id>/channels), so a test can tell what happened inside one click.
COUNT_FRAMES = """
(() => {
  const frames = { sent: 0, received: 0 };
  window.__kernelFrames = frames;
  const Native = window.WebSocket;
  const isKernel = (url) => String(url).includes("/channels");
  const send = Native.prototype.send;
  Native.prototype.send = function (...args) { if (isKernel(this.url)) frames.sent += 1; return send.apply(this, args); };
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      if (isKernel(this.url)) this.addEventListener("message", () => { frames.received += 1; });
    }
  };
})();
"""

#: Click a block inside one task and read what is drawn before the task ends: no kernel
#: message can arrive in between, so whatever is drawn was computed in the browser.
TOGGLE_IN_PAGE = """
async ([root, name]) => {
  const frames = window.__kernelFrames;
  const before = { sent: frames.sent, received: frames.received };
  const started = performance.now();
  root.querySelector(`.fv-block[data-block="${name}"]`).dispatchEvent(new MouseEvent("click", { bubbles: true }));
  const drawnMs = performance.now() - started;
  const drawn = {
    flow: root.querySelector(".fv-flow").textContent,
    state: root.querySelector(`.fv-block[data-block="${name}"]`).dataset.state,
    backwardFlops: Number(root.querySelector(".fv-costs").dataset.backwardFlops),
    saved: Number(root.querySelector(".fv-costs").dataset.saved),
    scenario: root.querySelector(".fv-scenario").value,
    receivedWhileDrawing: frames.received - before.received,
    sentWhileDrawing: frames.sent - before.sent,
  };
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  return { ...drawn, drawnMs, paintedMs: performance.now() - started };
}
"""

#: Click Train step and time it to the frame that shows the new report; then wait (up to 10 s)
#: for the widget to count a completed pass of the gradient dots (it records each in
#: data-animations), instead of sampling their positions at fixed delays.
STEP_IN_PAGE = """
async (root) => {
  const before = Number(root.querySelector(".fv-step-number").textContent);
  const animationsBefore = Number(root.dataset.animations || 0);
  const started = performance.now();
  const drawn = new Promise((resolve) => root.addEventListener("freeze-view:drawn",
    (event) => { if (event.detail.kind === "step") resolve(performance.now() - started); }));
  root.querySelector(".fv-step").click();
  const ms = await drawn;
  const waitUntil = performance.now() + 10000;
  while (Number(root.dataset.animations || 0) === animationsBefore && performance.now() < waitUntil) {
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
  return { before, after: Number(root.querySelector(".fv-step-number").textContent), ms, animationsBefore,
           animationsAfter: Number(root.dataset.animations || 0), status: root.querySelector(".fv-busy").textContent };
}
"""


def _notebook(relative: str) -> Path:
    path = ROOT / relative
    assert path.exists(), f"{relative} is missing: the browser test drives the simulator in it"
    cells = json.loads(path.read_text())["cells"]
    if not any("FreezeView" in "".join(c["source"]) for c in cells if c["cell_type"] == "code"):
        pytest.fail(f"{relative} has no code cell that shows a FreezeView: notebook 02 must embed the simulator")
    return path


def _record(artifacts: Path, surface: str, key: str, values: list[float]) -> None:
    """Add measurements to test-artifacts/simulator-timings.json (median and every value)."""
    timings = artifacts / "simulator-timings.json"
    data = json.loads(timings.read_text()) if timings.exists() else {}
    if not isinstance(data.get(surface), dict):
        data = {k: v for k, v in data.items() if isinstance(v, dict)}
        data[surface] = {}
    data[surface][key] = {"median": round(statistics.median(values), 1), "values": [round(v, 1) for v in values]}
    timings.write_text(json.dumps(data, indent=2, sort_keys=True))


def _shot(view: Locator, path: Path) -> None:
    """Screenshot the widget (scrolled into view first: JupyterLab renders cells lazily)."""
    view.scroll_into_view_if_needed()
    view.screenshot(path=str(path))


def _wait_idle(view: Locator) -> None:
    expect(view).to_have_attribute("data-kernel", "idle", timeout=STEP_TIMEOUT_MS)


def _toggle_and_step(page: Page, view: Locator, artifacts: Path, surface: str) -> None:
    """Toggle blocks (timed, frames counted), step (timed, animation sampled), keyboard."""
    expect(view.get_by_text("Loading widget")).to_have_count(0)
    view.scroll_into_view_if_needed()
    _wait_idle(view)
    names = view.locator(".fv-block").evaluate_all("(blocks) => blocks.map((b) => b.dataset.block)")
    handle = view.element_handle()
    in_page, synchronous, playwright_s, sent, after_frames = [], [], [], [], []
    for index in range(TOGGLES):
        name = names[index % (len(names) - 1)]
        old_state = view.locator(f'.fv-block[data-block="{name}"]').get_attribute("data-state")
        old_flow = view.locator(".fv-flow").text_content()
        received_before = page.evaluate("window.__kernelFrames.received")
        result = page.evaluate(TOGGLE_IN_PAGE, [handle, name])
        assert result["state"] != old_state, f"{name} did not change state"
        assert result["receivedWhileDrawing"] == 0, "the redraw waited for the kernel"
        assert result["flow"] and result["backwardFlops"] >= 0
        in_page.append(result["paintedMs"])
        synchronous.append(result["drawnMs"])
        sent.append(result["sentWhileDrawing"])
        time.sleep(0.6)
        after_frames.append(page.evaluate("window.__kernelFrames.received") - received_before)
        _wait_idle(view)
        if index == 0:
            _shot(view, artifacts / f"simulator-{surface}-toggle.png")
        # The same toggle the way the old test timed it: a real click, polled from Python.
        started = time.monotonic()
        view.locator(f'.fv-block[data-block="{name}"]').click()
        expect(view.locator(f'.fv-block[data-block="{name}"]')).to_have_attribute("data-state", old_state)
        expect(view.locator(".fv-flow")).to_have_text(old_flow)
        playwright_s.append((time.monotonic() - started) * 1000)
        time.sleep(0.3)
    _record(artifacts, surface, "toggle -> redrawn, in page (ms)", in_page)
    _record(artifacts, surface, "toggle -> drawn, the widget's own JavaScript (ms)", synchronous)
    _record(artifacts, surface, "toggle -> redrawn, playwright click to DOM check (ms)", playwright_s)
    _record(artifacts, surface, "kernel frames sent by the browser within a toggle", sent)
    _record(artifacts, surface, "kernel frames received in the 0.6 s after a toggle", after_frames)
    assert sum(sent) >= 1, "the new configuration is sent to the kernel, after the redraw"

    # Keyboard: Tab from the last control before the diagram reaches the first block; Space toggles.
    view.locator(".fv-k").focus()
    page.keyboard.press("Tab")
    expect(view.locator(".fv-block").first).to_be_focused()
    page.keyboard.press("ArrowRight")
    block = view.locator(".fv-block").nth(1)
    expect(block).to_be_focused()
    state = block.get_attribute("data-state")
    page.keyboard.press("Space")
    expect(block).not_to_have_attribute("data-state", state)
    expect(view.locator(".fv-block").nth(1)).to_be_focused()
    _shot(view, artifacts / f"simulator-{surface}-keyboard.png")
    page.keyboard.press("Space")
    expect(view.locator(".fv-block").nth(1)).to_have_attribute("data-state", state)
    _wait_idle(view)

    steps, polled = [], []
    for index in range(STEPS):
        result = page.evaluate(STEP_IN_PAGE, handle)
        assert result["after"] == result["before"] + 1
        if view.locator(".fv-gradient-line").count():
            assert result["animationsAfter"] > result["animationsBefore"], "the gradient dots travelled the path"
        assert result["status"] == "", f"the status line clears once the kernel has answered: {result['status']!r}"
        steps.append(result["ms"])
        if index == 0:
            _shot(view, artifacts / f"simulator-{surface}-step.png")
        _wait_idle(view)
    number = view.locator(".fv-step-number")
    before = int(number.inner_text())
    started = time.monotonic()
    view.locator(".fv-step").click()
    expect(number).to_have_text(str(before + 1), timeout=STEP_TIMEOUT_MS)
    polled.append((time.monotonic() - started) * 1000)
    _wait_idle(view)
    costs, summary = view.locator(".fv-costs"), view.locator(".fv-summary")
    assert costs.get_attribute("data-backward-flops") == summary.get_attribute("data-backward-flops"), \
        "the cost the browser summed equals the kernel's for the configuration it stepped"
    assert costs.get_attribute("data-saved") == summary.get_attribute("data-saved")
    _record(artifacts, surface, "Train step -> report drawn, in page (ms)", steps)
    _record(artifacts, surface, "Train step -> report drawn, playwright click to DOM check (ms)", polled)
    view.locator(".fv-step").click()  # once more, to catch the gradient dots on their way back
    expect(view.locator(".fv-dot").first).to_be_attached(timeout=STEP_TIMEOUT_MS)
    _shot(view, artifacts / f"simulator-{surface}-step-animation.png")
    _wait_idle(view)
    expect(view.locator(".fv-table tbody tr")).to_have_count(len(names))
    assert view.locator(".fv-bar-fill").first.evaluate("(e) => getComputedStyle(e).transitionDuration") != "0s"


def _open_lab(page: Page, lab_url: str, relative: str) -> Locator:
    page.add_init_script(COUNT_FRAMES)
    page.goto(f"{lab_url}/lab/tree/{relative}?reset")
    expect(page.get_by_text(re.compile(r"\|\s*Idle"))).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    toast = page.locator(".Toastify__toast")
    if toast.count() and toast.get_by_role("button", name=re.compile("^No")).count():
        toast.get_by_role("button", name=re.compile("^No")).first.click()
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    expect(panel).to_have_count(1)
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).first.click()
    view = panel.locator(".fv").first
    expect(view).to_be_visible(timeout=RUN_TIMEOUT_MS)
    _wait_kernels_settled(lab_url)
    return view


def _wait_kernels_settled(base: str, quiet_s: float = 2.0) -> None:
    """Wait until every kernel has been idle for ``quiet_s`` (Run All queues the rest of the
    notebook after the widget's cell; a busy kernel holds the widget's messages back)."""
    deadline, quiet_since = time.monotonic() + RUN_TIMEOUT_MS / 1000, None
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/api/kernels", timeout=10) as answer:
            states = [k["execution_state"] for k in json.load(answer)]
        if states and all(state == "idle" for state in states):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                return
        else:
            quiet_since = None
        time.sleep(0.25)
    raise AssertionError(f"the kernels at {base} did not settle: {states}")


def test_simulator_in_notebook_02(lab_url: str, page: Page, artifacts: Path) -> None:
    relative = NOTEBOOKS[0]
    path = _notebook(relative)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    view = _open_lab(page, lab_url, relative)
    _toggle_and_step(page, view, artifacts, "lab-02")
    _shot(view, artifacts / "simulator-lab-02.png")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"the test changed {relative}"


def test_simulator_notebook_in_jupyterlab(lab_url: str, page: Page, artifacts: Path) -> None:
    relative = NOTEBOOKS[1]
    path = _notebook(relative)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    view = _open_lab(page, lab_url, relative)
    _toggle_and_step(page, view, artifacts, "lab-simulator")

    # A preset, from the keyboard: the linear probe trains the head alone, and the live region says so.
    view.locator(".fv-preset-probe").focus()
    page.keyboard.press("Enter")
    states = view.locator(".fv-block").evaluate_all("(bs) => bs.map((b) => b.dataset.state)")
    assert states[:-1] == ["f"] * (len(states) - 1) and states[-1] == "t"
    expect(view.locator(".fv-flow")).to_have_text("Gradients flow through classifier and stop at head_conv")
    expect(view.locator(".fv-announce")).to_have_text(re.compile(
        r"^Preset Linear probe applied\. Gradients flow through classifier and stop at head_conv\. Trainable parameters"))
    _shot(view, artifacts / "simulator-feature-preset.png")
    _wait_idle(view)
    _no_axe_violations(page, "JupyterLab light, linear-probe preset")

    # Ten steps: a loss curve, and frozen blocks stay flat.
    view.locator(".fv-preset-lastk").click()
    _wait_idle(view)
    view.locator(".fv-train").click()
    expect(view.locator(".fv-step-number")).not_to_have_text("0", timeout=STEP_TIMEOUT_MS)
    _wait_idle(view)
    points = view.locator(".fv-loss polyline").get_attribute("points").split()
    assert len(points) >= 10
    flat = view.locator('tr[data-block="stem"] .fv-spark-line').first.evaluate(
        "(line) => line.getAttribute('points') || `${line.getAttribute('y1')},${line.getAttribute('y2')}`")
    ys = {p.split(",")[1] for p in flat.split()} if " " in flat else set(flat.split(","))
    assert len(ys) == 1, "the frozen stem's distance from the start stays flat"
    _shot(view, artifacts / "simulator-feature-train10.png")

    # Which block would move most if unfrozen.
    view.locator(".fv-rank").click()
    _wait_idle(view)
    expect(view.locator(".fv-ranking")).to_contain_text("largest relative gradient")
    _shot(view, artifacts / "simulator-feature-ranking.png")

    # A/B on the same batch and seed.
    view.locator(".fv-pin").click()
    _wait_idle(view)
    view.locator(".fv-preset-all").click()
    view.locator(".fv-ab-steps").fill("3")
    view.locator(".fv-compare").click()
    _wait_idle(view)
    expect(view.locator(".fv-ab-table")).to_contain_text("loss after 3 steps")
    a, b = view.locator(".fv-ab-table tbody tr").nth(1).locator("td").all_inner_texts()
    assert re.fullmatch(r"\d+\.\d{3}", a) and re.fullmatch(r"\d+\.\d{3}", b)
    expect(view.locator(".fv-ab polyline")).to_have_count(2)
    _shot(view, artifacts / "simulator-feature-ab.png")
    _no_axe_violations(page, "JupyterLab light, after ten steps, the ranking and A/B")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"the test changed {relative}"


def _no_axe_violations(page: Page, where: str) -> None:
    """axe-core's WCAG 2.0/2.1 A and AA rules find nothing in the simulator (JupyterLab's own
    interface around it is JupyterLab's to answer for)."""
    violations = axe.audit(page, ".fv")
    assert not violations, f"{where}:\n{axe.summary(violations)}"


#: WCAG contrast of every visible text element of the widget against the background it sits on
#: (the first opaque background up its ancestors, the page's if none).
CONTRAST_IN_PAGE = """
(root) => {
  const rgb = (text) => (text.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map((c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; })
    .reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (node) => {
    for (let n = node; n; n = n.parentElement) {
      const c = rgb(getComputedStyle(n).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0.9)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const rows = [];
  for (const node of root.querySelectorAll("*")) {
    if (node.closest("svg") || !node.offsetParent) continue;
    const own = [...node.childNodes].some((c) => c.nodeType === 3 && c.textContent.trim());
    if (!own || getComputedStyle(node).visibility === "hidden") continue;
    const fg = lum(rgb(getComputedStyle(node).color).slice(0, 3)), bg = lum(background(node));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    rows.push({ text: node.textContent.trim().slice(0, 40), cls: node.className, ratio: Math.round(ratio * 100) / 100,
                disabled: Boolean(node.closest(":disabled")) });
  }
  return { rows, theme: document.body.dataset.jpThemeLight };
}
"""


#: Shut every kernel down through the server's REST API, from the page (it holds the XSRF cookie).
SHUT_DOWN_KERNELS = """
async () => {
  const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]+)/) || [])[1];
  const headers = xsrf ? { "X-XSRFToken": decodeURIComponent(xsrf) } : {};
  const kernels = await (await fetch("/api/kernels")).json();
  for (const kernel of kernels) {
    const answer = await fetch(`/api/kernels/${kernel.id}`, { method: "DELETE", headers });
    if (!answer.ok) throw new Error(`DELETE kernel ${kernel.id}: HTTP ${answer.status}`);
  }
  return kernels.length;
}
"""


def test_dark_theme_text_is_readable_and_a_dead_kernel_does_not_lock_the_buttons(dark_lab_url: str, page: Page,
                                                                                  artifacts: Path) -> None:
    relative = NOTEBOOKS[1]
    view = _open_lab(page, dark_lab_url, relative)
    expect(view.get_by_text("Loading widget")).to_have_count(0)
    view.locator(".fv-step").click()                 # a report, so the table has text too
    _wait_idle(view)
    measured = page.evaluate(CONTRAST_IN_PAGE, view.element_handle())
    assert measured["theme"] == "false", "JupyterLab is in a dark theme"
    readable = [r for r in measured["rows"] if not r["disabled"]]
    assert len(readable) > 20
    poor = [r for r in readable if r["ratio"] < 4.5]
    assert not poor, f"text below 4.5:1 contrast in the dark theme: {poor[:8]}"
    _shot(view, artifacts / "simulator-dark-theme.png")
    _no_axe_violations(page, "JupyterLab dark, after a step")
    view.locator('.fv-block[data-block="stage5"]').click()          # frozen, trainable and the backward path
    view.locator(".fv-preset-lastk").click()
    _wait_idle(view)
    _no_axe_violations(page, "JupyterLab dark, after a toggle and a preset")

    # The kernel goes away while a click waits for it: the widget gives up, says so, re-enables.
    view.evaluate("(root) => { root.dataset.pendingTimeoutMs = '3000'; }")
    stopped = page.evaluate(SHUT_DOWN_KERNELS)
    assert stopped >= 1, "the notebook's kernel was shut down"
    view.locator(".fv-step").evaluate("(button) => button.click()")   # past any "kernel died" dialog
    expect(view).to_have_attribute("data-kernel", "lost", timeout=20000)
    expect(view.locator(".fv-error")).to_contain_text("No answer from the kernel")
    expect(view.locator(".fv-step")).to_be_enabled()
    expect(view.locator(".fv-busy")).to_have_text("")


def test_simulator_page_in_voila(voila_url: str, page: Page, browser_context, artifacts: Path) -> None:
    page.add_init_script(COUNT_FRAMES)
    page.goto(f"{voila_url}/", timeout=RUN_TIMEOUT_MS)
    view = page.locator(".fv").first
    expect(view).to_be_visible(timeout=RUN_TIMEOUT_MS)
    _toggle_and_step(page, view, artifacts, "voila")

    # The architecture picker: ResNet-18, whose weights are usually not cached here, said in words.
    from tlhelpers.simulator.architectures import cached_weights

    note = "ImageNet weights" if cached_weights("resnet18") else "random initialisation"
    view.locator(".fv-arch").select_option("resnet18")
    expect(view.locator(".fv-weights")).to_contain_text(note, timeout=RUN_TIMEOUT_MS)
    _wait_idle(view)
    for name in ("stem", "layer1", "layer2", "layer3"):
        expect(view.locator(f'.fv-block[data-block="{name}"]')).to_have_attribute("data-state", re.compile("[fd]"))
    view.locator('.fv-block[data-block="layer4"]').click()
    expect(view.locator(".fv-flow")).to_have_text("Gradients flow through fc -> layer4 and stop at layer3")
    _shot(view, artifacts / "simulator-feature-picker.png")
    _wait_idle(view)

    # The page address now holds the scenario; a new page opened on it is in the same state.
    scenario = view.locator(".fv-scenario").input_value()
    assert scenario.startswith("arch=resnet18&frozen=stem,layer1,layer2,layer3&")
    expect(page).to_have_url(re.compile(re.escape(scenario.split("&")[0])))
    link = page.url
    shared = browser_context.new_page()
    try:
        shared.add_init_script(COUNT_FRAMES)
        shared.goto(link, timeout=RUN_TIMEOUT_MS)
        again = shared.locator(".fv").first
        expect(again).to_be_visible(timeout=RUN_TIMEOUT_MS)
        expect(again.locator(".fv-scenario")).to_have_value(scenario)
        expect(again.locator(".fv-flow")).to_have_text("Gradients flow through fc -> layer4 and stop at layer3")
        expect(again.locator(".fv-weights")).to_contain_text(note)
        _shot(again, artifacts / "simulator-feature-shared-link.png")

        # Paste a scenario: back to MobileNetV2 with two blocks frozen.
        text = "arch=mobilenet_v2&frozen=stem,stage1&seed=0&opt=sgd,0.01,0.9&switches=bn_train"
        again.locator(".fv-paste").fill(text)
        again.locator(".fv-open").click()
        expect(again.locator(".fv-scenario")).to_have_value(text, timeout=RUN_TIMEOUT_MS)
        expect(again.locator(".fv-switch-bn_train_when_frozen")).to_be_checked()
        expect(again.locator(".fv-flow")).to_have_text(
            "Gradients flow through classifier -> head_conv -> stage5 -> stage4 -> stage3 -> stage2 and stop at stage1")
        _shot(again, artifacts / "simulator-feature-paste.png")
    finally:
        shared.close()
    page.screenshot(path=str(artifacts / "simulator-voila-page.png"), full_page=True)
