"""FreezeView driven headless, the way a learner drives it: set toggle values, click buttons,
then check the simulator's state, the summary text and the figure.

Real MobileNetV2 ImageNet weights and a real Fashion-MNIST batch; no kernel and no browser
(tests/ui covers those).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tlhelpers.simulator import FreezeSim, FreezeView, save_snapshot

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
START = {"frozen": [], "seed": 0, "bn_train_when_frozen": False, "stale_gradients": False}


@pytest.fixture(scope="module")
def shared_sim(pretrained_mobilenet_v2) -> FreezeSim:
    return FreezeSim(pretrained_mobilenet_v2)


@pytest.fixture
def view(shared_sim) -> FreezeView:
    shared_sim.load_state(START)
    return FreezeView(shared_sim)


def png(view: FreezeView) -> bytes:
    """The figure's current PNG bytes (ipywidgets stores them as a memoryview)."""
    return bytes(view.image.value)


def text_of(html: str) -> str:
    """The summary as a reader sees it: tags removed, entities for arrows resolved."""
    import html as html_lib

    return html_lib.unescape(re.sub(r"<[^>]+>", "", html.replace("<br>", "\n")))


def test_initial_state(view):
    sim = view.sim
    assert list(view.toggles) == sim.block_names
    assert all(t.value is False and t.button_style == "success" for t in view.toggles.values())
    assert view.toggles["stem"].description == "stem: Trainable"
    assert "Step 0" in text_of(view.summary.value)
    assert png(view).startswith(PNG_MAGIC)
    assert "all the way to the input" in text_of(view.summary.value)


def test_toggle_step_and_reset(view):
    sim = view.sim
    view.toggles["stage5"].value = True
    assert sim.frozen == {"stage5"}
    assert view.toggles["stage5"].description == "stage5: Frozen"
    assert view.toggles["stage5"].button_style == "info"  # blue
    assert "pass-through" in view.diagram.value

    for name in ("stem", "stage1"):
        view.toggles[name].value = True
    assert sim.frozen == {"stage5", "stem", "stage1"}
    before = png(view)
    view.step_button.click()
    assert sim.step_count == 1
    summary = text_of(view.summary.value)
    report = sim.history[-1]
    assert "Step 1: loss" in summary
    sentence = report.flow_sentence("→")
    assert sentence == ("gradients flow through classifier → head_conv → stage5 → stage4 → stage3 → "
                        "stage2 and stop at stage1")
    assert "G" + sentence[1:] in summary
    assert re.search(r"Frozen: stem, stage1, stage5", summary)
    assert png(view) != before and png(view).startswith(PNG_MAGIC)

    view.step_button.click()
    assert "Step 2" in text_of(view.summary.value)

    before = png(view)
    view.reset_button.click()
    assert sim.step_count == 0 and "Step 0" in text_of(view.summary.value)
    assert sim.frozen == {"stage5", "stem", "stage1"}, "reset keeps the toggles"
    assert png(view) != before


def test_unfreezing_is_a_click_too(view):
    view.toggles["classifier"].value = True
    view.toggles["classifier"].value = False
    assert view.sim.frozen == set()
    assert view.toggles["classifier"].button_style == "success"


def test_batchnorm_switch(view):
    for name in ("stem", "stage1"):
        view.toggles[name].value = True
    view.bn_switch.value = True
    assert view.sim.bn_train_when_frozen is True
    view.step_button.click()
    summary = text_of(view.summary.value)
    assert "BatchNorm statistics drifted in frozen blocks: stem, stage1" in summary
    view.bn_switch.value = False
    view.reset_button.click()
    view.step_button.click()
    assert "drifted" not in text_of(view.summary.value)


def test_stale_gradient_switch(view):
    view.stale_switch.value = True
    assert view.sim.stale_gradients is True
    view.step_button.click()
    view.toggles["stem"].value = True
    view.step_button.click()
    summary = text_of(view.summary.value)
    assert "Frozen but moved: stem" in summary
    assert view.sim.history[-1].blocks["stem"].weight_delta > 0


def test_refresh_follows_the_simulator(view):
    view.sim.load_state({"frozen": ["stem", "stage2"], "bn_train_when_frozen": True})
    view.refresh()
    assert [n for n, t in view.toggles.items() if t.value] == ["stem", "stage2"]
    assert view.bn_switch.value is True
    assert view.toggles["stage2"].description == "stage2: Frozen"


def test_errors_show_in_the_summary(view):
    with pytest.raises(KeyError):
        view._on_toggle("no-such-block", {"new": True})
    assert "KeyError" in view.summary.value and "Valid blocks" in view.summary.value


def test_view_needs_a_simulator(pretrained_mobilenet_v2):
    with pytest.raises(TypeError, match=r"FreezeView\(FreezeSim\(model\)\)"):
        FreezeView(pretrained_mobilenet_v2)


def test_snapshot_png(shared_sim, tmp_path):
    shared_sim.load_state({"frozen": ["stem", "stage1", "stage2", "stage3"], "seed": 0})
    path = save_snapshot(shared_sim, tmp_path / "figures" / "snap.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert shared_sim.step_count == 1, "with no step taken yet, one is run"
