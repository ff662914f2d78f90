"""The course website (``make book``) in a real browser: Debian chromium, no kernel, no network.

The site is built into a temporary folder by scripts/build_book.py's ``build()`` and served by a
plain ``http.server`` thread on 127.0.0.1, as ``cd build/book && python -m http.server`` would.
Every request a page makes is recorded: none may go to any other host. The landing page must
link every notebook page, a notebook page must show its figures, a solution must stay folded
until its summary is clicked, and the simulator must work in the page with no kernel: a toggle
redraws the backward path and the cost figures.

Two tests check the offline contract between the site and the widget
(tlhelpers/simulator/static/freeze_view.js), named ``test_offline_contract_*``: when the model
holds a non-empty ``offline_note``, the controls that need a kernel are disabled and carry the
class ``fv-needs-kernel``, the note is shown in ``.fv-offline-note``, and a
``#scenario=<urlencoded scenario>`` in the page address is applied on load.
"""

from __future__ import annotations

import functools
import http.server
import re
import threading
import urllib.parse
from pathlib import Path

import axe  # noqa: E402  (tests/ui is on pytest's pythonpath)
import pytest

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the browser_tools fixture skips, or fails under CI, and says why
    Page = expect = None

ROOT = Path(__file__).resolve().parents[2]
LOAD_TIMEOUT_MS = 30_000


import build_book as book  # noqa: E402  (scripts/ is on pytest's pythonpath)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site served on 127.0.0.1 (a free port): yields (base URL, host:port, folder)."""
    folder = book.build(tmp_path_factory.mktemp("book") / "book").parent
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = f"127.0.0.1:{server.server_address[1]}"
    try:
        yield f"http://{host}", host, folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def requests_seen(page: Page) -> list[str]:
    """Every URL the page requests, from the moment the fixture is set up."""
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    return seen


def _elsewhere(urls: list[str], host: str) -> list[str]:
    """The requests that went to any host but the site's own (data: and blob: URLs stay in the page)."""
    foreign = []
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            continue
        if parts.scheme not in ("http", "https") or parts.netloc != host:
            foreign.append(url)
    return foreign


def _pages() -> list[str]:
    return [path.stem + ".html" for path in book.course_notebooks()]


def _open_simulator(page: Page, base: str, suffix: str = ""):
    page.goto(f"{base}/simulator.html{suffix}")
    view = page.locator(".fv").first
    expect(view).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    expect(page.locator('[data-offline-model="ready"]')).to_have_count(1, timeout=LOAD_TIMEOUT_MS)
    return view


def test_landing_page_links_every_notebook_page(site, page: Page, requests_seen: list[str]) -> None:
    base, host, _ = site
    page.goto(f"{base}/index.html")
    cards = page.locator(".book-card h2 a")
    expect(cards).to_have_count(len(_pages()))
    assert cards.evaluate_all("(links) => links.map((a) => a.getAttribute('href'))") == _pages()
    cards.nth(1).click()
    expect(page).to_have_url(f"{base}/{_pages()[1]}")
    expect(page.locator("h1").first).to_contain_text("02")
    page.locator(".book-header .book-next").click()
    expect(page).to_have_url(f"{base}/{_pages()[2]}")
    assert not _elsewhere(requests_seen, host), _elsewhere(requests_seen, host)


def test_every_page_loads_only_from_the_site_and_shows_its_figures(site, page: Page, requests_seen: list[str],
                                                                   artifacts: Path) -> None:
    base, host, _ = site
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    for name in ["index.html", *_pages()]:
        response = page.goto(f"{base}/{name}")
        assert response is not None and response.ok, f"{name}: HTTP {response and response.status}"
        page.wait_for_load_state("networkidle")
        figures = page.locator(".jp-RenderedImage img")
        widths = figures.evaluate_all("(images) => images.map((img) => img.complete ? img.naturalWidth : 0)")
        assert all(width > 0 for width in widths), f"{name}: a figure did not load: {widths}"
        if name == "04_training_a_new_head.html":
            assert len(widths) >= 3, "notebook 04's learning curves and grids are on its page"
    assert len(requests_seen) >= len(_pages()) + 1, "the recorder saw the pages load"
    foreign = _elsewhere(requests_seen, host)
    assert not foreign, f"requests to another host: {foreign[:10]}"
    assert not errors, f"script errors: {errors}"


def test_a_solution_stays_folded_until_its_summary_is_clicked(site, page: Page) -> None:
    base, _, _ = site
    page.goto(f"{base}/02_inspecting_and_freezing.html")
    solution = page.locator("details.solution").first
    expect(solution).to_be_attached()
    assert solution.get_attribute("open") is None
    code = solution.locator(".jp-CodeCell").first
    expect(code).to_be_hidden()
    solution.locator("summary").click()
    expect(solution).to_have_attribute("open", "")
    expect(code).to_be_visible()
    expect(code).to_contain_text("Solution")


def test_the_simulator_toggles_in_the_page_without_a_kernel(site, page: Page, requests_seen: list[str],
                                                           artifacts: Path) -> None:
    base, host, _ = site
    view = _open_simulator(page, base)
    flow, costs = view.locator(".fv-flow"), view.locator(".fv-costs")
    expect(flow).to_have_text("Gradients flow through classifier and stop at head_conv")
    before = {"flow": flow.text_content(), "flops": costs.get_attribute("data-backward-flops"),
              "saved": costs.get_attribute("data-saved"), "text": costs.inner_text()}
    block = view.locator('.fv-block[data-block="stage5"]')
    state = block.get_attribute("data-state")
    block.click()
    expect(block).not_to_have_attribute("data-state", state)
    expect(flow).to_have_text("Gradients flow through classifier -> head_conv -> stage5 and stop at stage4")
    assert costs.get_attribute("data-backward-flops") != before["flops"], "the backward cost was redrawn"
    assert costs.get_attribute("data-saved") != before["saved"], "the memory cost was redrawn"
    assert costs.inner_text() != before["text"]
    view.locator(".fv-preset-all").click()
    expect(flow).to_contain_text("Gradients flow through classifier -> head_conv -> stage5")
    view.screenshot(path=str(artifacts / "book-simulator-widget.png"))
    block.click()   # and back: the page computes it again from the stored table
    expect(block).to_have_attribute("data-state", "f")
    assert not _elsewhere(requests_seen, host), _elsewhere(requests_seen, host)


# ------------------------------------------------------------------ the offline contract with freeze_view.js

def test_offline_contract_kernel_controls_disabled_and_note_shown(site, page: Page) -> None:
    """Contract: with ``offline_note`` set, what needs a kernel is disabled (class fv-needs-kernel)
    and the note is visible in .fv-offline-note."""
    base, _, _ = site
    view = _open_simulator(page, base)
    needs_kernel = view.locator(".fv-needs-kernel")
    assert needs_kernel.count() >= 3, "Train step, A/B training and the architecture picker need a kernel"
    for control in needs_kernel.all():
        expect(control).to_be_disabled()
    for selector in (".fv-step", ".fv-compare", ".fv-arch"):
        expect(view.locator(selector)).to_have_class(re.compile(r"\bfv-needs-kernel\b"))
    note = view.locator(".fv-offline-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("make lab")
    expect(view.locator(".fv-preset-probe")).to_be_enabled()   # what the browser alone can do stays on


def test_offline_contract_scenario_in_the_address_is_applied(site, page: Page) -> None:
    """Contract: ``#scenario=<urlencoded scenario>`` in the page address opens the simulator in it."""
    base, _, _ = site
    scenario = "arch=mobilenet_v2&frozen=stem,stage1&seed=0&opt=sgd,0.01,0.9&switches="
    view = _open_simulator(page, base, "#scenario=" + urllib.parse.quote(scenario, safe=""))
    expect(view.locator(".fv-flow")).to_have_text(
        "Gradients flow through classifier -> head_conv -> stage5 -> stage4 -> stage3 -> stage2 and stop at stage1")
    expect(view.locator('.fv-block[data-block="stem"]')).to_have_attribute("data-state", "f")
    expect(view.locator('.fv-block[data-block="stage2"]')).to_have_attribute("data-state", "t")


# ------------------------------------------------------------------ accessibility (WCAG 2.1 AA)

@pytest.mark.parametrize("width", [1400, 700])
def test_every_page_passes_axe_wcag_aa(site, page: Page, width: int) -> None:
    """axe-core's WCAG 2.0/2.1 A and AA rules find nothing on any page (wide and narrow layouts),
    nor on the simulator after a toggle and a preset (frozen, trainable and the backward path drawn)."""
    base, _, _ = site
    page.set_viewport_size({"width": width, "height": 1000})
    failures = {}
    for name in ["index.html", *_pages()]:
        page.goto(f"{base}/{name}")
        page.wait_for_load_state("load")
        expect(page.locator("html")).to_have_attribute("data-book-scrollables", re.compile(r"\d+"))
        violations = axe.audit(page)
        if violations:
            failures[name] = axe.summary(violations)
    view = _open_simulator(page, base)
    view.locator('.fv-block[data-block="stage4"]').click()
    view.locator(".fv-preset-last").click()
    violations = axe.audit(page, ".fv")
    if violations:
        failures["simulator.html after a toggle and a preset"] = axe.summary(violations)
    assert not failures, "\n".join(f"{name}:\n{text}" for name, text in failures.items())


def test_scrollable_code_and_outputs_take_focus(site, page: Page) -> None:
    """What scrolls sideways can be reached and scrolled from the keyboard; what fits is no Tab stop."""
    base, _, _ = site
    page.set_viewport_size({"width": 700, "height": 1000})
    page.goto(f"{base}/04_training_a_new_head.html")
    page.wait_for_load_state("load")
    marked = page.locator("[data-book-scrolls]")
    assert marked.count() >= 1, "at 700 px some code or output scrolls sideways"
    first = marked.first
    expect(first).to_have_attribute("tabindex", "0")
    expect(first).to_have_attribute("role", "region")
    expect(first).to_have_attribute("aria-label", re.compile(r"(Code cell|Cell output|Simulator) \(scrolls"))
    first.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert first.evaluate("(e) => e.scrollLeft") > 0, "the arrow keys scroll the focused region"
    narrow = marked.count()
    page.set_viewport_size({"width": 2400, "height": 1000})
    expect(marked).not_to_have_count(narrow)       # wider: fewer regions scroll, and they leave the Tab order
    assert page.locator('.jp-InputArea-editor > .cm-editor[tabindex="0"]:not([data-book-scrolls])').count() == 0


def test_keyboard_alone_toggles_a_block_presses_a_preset_and_hears_the_result(site, page: Page) -> None:
    """Tab to a block, Space toggles it, Enter on a preset applies it; each time the polite live
    region says the new backward path and costs, and the focused control shows a focus ring."""
    base, _, _ = site
    view = _open_simulator(page, base)
    announcer = view.locator(".fv-announce")
    expect(announcer).to_have_attribute("aria-live", "polite")
    for _ in range(80):                           # from the top of the page, Tab only
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.dataset.block === 'stage5'"):
            break
    else:
        pytest.fail("Tab never reached the stage5 block")
    ring = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert ring not in ("none", ""), "the focused block shows a focus ring"
    page.keyboard.press("Space")
    expect(announcer).to_have_text(re.compile(
        r"^stage5 is now trainable\. Gradients flow through classifier -> head_conv -> stage5 and stop at stage4\. "
        r"Trainable parameters [\d.<%]+, backward compute [\d.<%]+, training memory [\d.<%]+ of training everything\.$"))
    page.keyboard.press("Shift+Tab")
    for _ in range(12):                           # back to the presets row
        if page.evaluate("() => document.activeElement.dataset.preset === 'probe'"):
            break
        page.keyboard.press("Shift+Tab")
    else:
        pytest.fail("Shift+Tab never reached the linear-probe preset")
    page.keyboard.press("Enter")
    expect(announcer).to_have_text(re.compile(r"^Preset Linear probe applied\. Gradients flow through classifier "
                                              r"and stop at head_conv\."))
    expect(view.locator('.fv-block[data-block="stage5"]')).to_have_attribute("data-state", "f")


def test_headings_go_down_one_level_at_a_time(site, page: Page) -> None:
    """Each page has one h1 and never skips a level on the way down (h2 -> h4), so a screen
    reader's list of headings is the page's outline."""
    base, _, _ = site
    problems = []
    for name in ["index.html", *_pages()]:
        page.goto(f"{base}/{name}")
        levels = page.locator("h1, h2, h3, h4, h5, h6").evaluate_all(
            "(hs) => hs.filter((h) => h.offsetParent !== null || h.closest('details')).map((h) => Number(h.tagName[1]))")
        if levels.count(1) != 1 or levels[0] != 1:
            problems.append(f"{name}: {levels.count(1)} h1 (first heading h{levels[0] if levels else '-'})")
        skips = [(a, b) for a, b in zip(levels, levels[1:], strict=False) if b > a + 1]
        if skips:
            problems.append(f"{name}: skips {skips[:3]}")
    assert not problems, "\n".join(problems)
