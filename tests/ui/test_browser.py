"""The freeze-toggle simulator in a real browser: JupyterLab (notebook 02 and the standalone
notebook) and the Voila page.

Each test runs the notebook, flips the first block's toggle, clicks Train step and checks
that the summary shows the next step number and the block's new state, as a learner would
see it. Screenshots, server logs and the measured toggle-to-redraw time go to test-artifacts/.
Times are recorded, never asserted (they belong to benchmarks/).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest

try:
    from playwright.sync_api import Locator, Page, expect
except ImportError:  # the browser_context fixture skips, or fails under CI, and says why
    Locator = Page = expect = None

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ["notebooks/02_inspecting_and_freezing.ipynb", "notebooks/simulator.ipynb"]
LOAD_TIMEOUT_MS = 120_000  # JupyterLab's page and a kernel start
RUN_TIMEOUT_MS = 300_000   # a cold kernel, torch import, model load and first measurement
STEP_TIMEOUT_MS = 120_000  # one step plus, the first time, measuring the new configuration


def _notebook(relative: str) -> Path:
    path = ROOT / relative
    assert path.exists(), f"{relative} is missing: the browser test drives the simulator in it"
    cells = json.loads(path.read_text())["cells"]
    if not any("FreezeView(" in "".join(c["source"]) for c in cells if c["cell_type"] == "code"):
        pytest.fail(f"{relative} has no code cell that shows FreezeView(...): notebook 02 must embed "
                    "the simulator (issue 5)")
    return path


def _record(artifacts: Path, key: str, value: float) -> None:
    timings = artifacts / "simulator-timings.json"
    data = json.loads(timings.read_text()) if timings.exists() else {}
    data[key] = round(value, 3)
    timings.write_text(json.dumps(data, indent=2, sort_keys=True))


def _drive_simulator(page: Page, view: Locator, artifacts: Path, label: str) -> None:
    """Toggle the first block, take a step, check the summary; screenshot the result."""
    expect(view.get_by_text("Loading widget")).to_have_count(0)
    step_number = view.locator(".freeze-step-number")
    expect(step_number).to_have_count(1)
    before = int(step_number.inner_text())

    toggle = view.locator(".freeze-toggle").first
    name, _, state = toggle.inner_text().strip().partition(":")
    name, state = name.strip(), state.strip()
    assert state in ("Frozen", "Trainable"), f"unexpected toggle text {toggle.inner_text()!r}"
    new_state = "Trainable" if state == "Frozen" else "Frozen"
    figure = view.locator("img.freeze-figure")
    old_src = figure.get_attribute("src")

    started = time.monotonic()
    toggle.click()
    expect(toggle).to_contain_text(new_state, timeout=STEP_TIMEOUT_MS)
    expect(figure).not_to_have_attribute("src", old_src or "", timeout=STEP_TIMEOUT_MS)
    _record(artifacts, f"{label}: toggle -> redrawn figure (s)", time.monotonic() - started)

    started = time.monotonic()
    view.locator("button.freeze-step").click()
    expect(step_number).to_have_text(str(before + 1), timeout=STEP_TIMEOUT_MS)
    _record(artifacts, f"{label}: Train step -> summary updated (s)", time.monotonic() - started)

    listing = view.locator(".freeze-frozen-list" if new_state == "Frozen" else ".freeze-trainable-list")
    expect(listing).to_contain_text(name)
    assert name in [n.strip() for n in listing.inner_text().split(",")]
    expect(view.locator(".freeze-summary")).to_contain_text(f"Step {before + 1}")
    flow = re.compile(r"radients flow through|o block is trainable")
    expect(view.locator(".freeze-flow")).to_contain_text(flow)
    view.scroll_into_view_if_needed()
    view.screenshot(path=str(artifacts / f"simulator-{label}.png"))


def _dismiss_news(page: Page) -> None:
    """Close the "Would you like to receive official Jupyter news?" toast if it shows."""
    toast = page.locator(".Toastify__toast")
    if toast.count():
        no = toast.get_by_role("button", name=re.compile("^No"))
        if no.count():
            no.first.click()


def _run_all(page: Page) -> None:
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).first.click()


@pytest.mark.parametrize("relative", NOTEBOOKS, ids=lambda p: Path(p).stem)
def test_simulator_in_jupyterlab(relative: str, lab_url: str, page: Page, artifacts: Path) -> None:
    path = _notebook(relative)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    page.goto(f"{lab_url}/lab/tree/{relative}?reset")
    expect(page.get_by_text(re.compile(r"\|\s*Idle"))).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    _dismiss_news(page)
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    expect(panel).to_have_count(1)
    _run_all(page)
    view = panel.locator(".freeze-view").first
    expect(view).to_be_visible(timeout=RUN_TIMEOUT_MS)
    _drive_simulator(page, view, artifacts, f"lab-{path.stem}")
    page.screenshot(path=str(artifacts / f"simulator-lab-{path.stem}-page.png"))

    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"the test changed {relative}"


def test_simulator_in_voila(voila_url: str, page: Page, artifacts: Path) -> None:
    page.goto(f"{voila_url}/", timeout=RUN_TIMEOUT_MS)
    view = page.locator(".freeze-view").first
    expect(view).to_be_visible(timeout=RUN_TIMEOUT_MS)
    _drive_simulator(page, view, artifacts, "voila")
    page.screenshot(path=str(artifacts / "simulator-voila-page.png"), full_page=True)
