"""FreezeView driven headless, the way the browser drives it: set the traits a click sets
(``frozen``, ``switches``), send the messages a button sends (``view.handle({...})``), then check
the synced traits against the simulator's own PyTorch model or a computation done here.

Real MobileNetV2 ImageNet weights and a real Fashion-MNIST batch; no kernel and no browser
(tests/ui covers those, tests/test_simulator_js.py the browser's own arithmetic).
"""

from __future__ import annotations

import base64
import copy

import pytest
import torch

from tlhelpers.simulator import FreezeSim, FreezeView, scenario
from tlhelpers.simulator.view import report_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEAD_ONLY = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "head_conv"]
START = {"frozen": HEAD_ONLY, "seed": 0, "bn_train_when_frozen": False, "stale_gradients": False,
         "train_norm_affine": False, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9}


@pytest.fixture(scope="module")
def shared_view(pretrained_mobilenet_v2) -> FreezeView:
    return FreezeView(FreezeSim(pretrained_mobilenet_v2, frozen=HEAD_ONLY))


@pytest.fixture
def view(shared_view) -> FreezeView:
    """The shared view back at the start (head only trainable, step 0), as a scenario would put it."""
    shared_view.handle({"action": "scenario", "text": scenario.encode("mobilenet_v2", START)})
    shared_view.pinned = {}
    return shared_view


def changes(view: FreezeView, name: str) -> list:
    """Record every new value the kernel syncs for trait ``name``."""
    seen = []
    view.observe(lambda change: seen.append(change["new"]), names=name)
    return seen


def test_initial_traits(view):
    assert view.arch == "mobilenet_v2" and view.weights_note
    assert [b["name"] for b in view.blocks] == view.sim.block_names
    assert [b["head"] for b in view.blocks].count(True) == 1 and view.blocks[-1]["head"]
    assert sum(b["params"] for b in view.blocks) == view.sim.total_params()
    assert view.frozen == HEAD_ONLY and view.report == {} and view.history == []
    assert view.table["order"] == view.sim.block_names and view.table["forwardFlops"] > 0
    assert view.scenario == "arch=mobilenet_v2&frozen=" + ",".join(HEAD_ONLY) + "&seed=0&opt=sgd,0.01,0.9&switches="
    assert any(option["name"] == "resnet18" for option in view.arch_options)
    data, _ = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    assert base64.b64decode(data["image/png"]).startswith(PNG_MAGIC), "a picture for readers without widgets"


def test_a_toggle_changes_the_simulator_but_not_its_weights(view):
    view.handle({"action": "step"})
    weights = copy.deepcopy(view.sim.model.state_dict())
    tables = changes(view, "table")
    view.frozen = ["stem", "stage1"]  # what a click in the browser syncs
    assert view.sim.frozen == {"stem", "stage1"}
    assert view.sim.step_count == 1, "toggling keeps the run going"
    assert all(torch.equal(t, weights[k]) for k, t in view.sim.model.state_dict().items())
    assert tables == [], "the browser already has every case it needs: nothing is measured or sent"
    assert view.scenario.startswith("arch=mobilenet_v2&frozen=stem,stage1&")
    assert not view.sim.model.features[0][0].weight.requires_grad
    assert view.sim.model.features[2].conv[0][0].weight.requires_grad


def test_train_step_report(view):
    reports = changes(view, "report")
    view.handle({"action": "step"})
    assert len(reports) == 1 and view.report["step"] == 1
    assert view.report == report_json(view.sim.history[-1])
    rows = {row["name"]: row for row in view.report["blocks"]}
    for name, row in rows.items():  # checked on the model itself
        grads = [p.grad for p in view.sim.block_parameters(name).values()]
        if name in HEAD_ONLY:
            assert row["gradNorm"] is None and all(g is None for g in grads)
        else:
            norm = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
            assert row["gradNorm"] == pytest.approx(norm, rel=1e-5)
    assert view.report["flow"] == ["classifier"] and view.report["stopAt"] == "head_conv"
    assert view.history == [{"step": 1, "loss": view.report["loss"],
                             "distances": [row["distance"] for row in view.report["blocks"]]}]


def test_train_ten_steps_is_live_and_frozen_blocks_stay_flat(view):
    view.frozen = ["stem", "stage1", "stage2", "stage3", "stage4"]
    reports = changes(view, "report")
    view.handle({"action": "train", "steps": 10})
    assert [r["step"] for r in reports] == list(range(1, 11)), "one report per step, sent as it happens"
    assert [p["step"] for p in view.history] == list(range(1, 11))
    names = view.sim.block_names
    for index, name in enumerate(names):
        path = [p["distances"][index] for p in view.history]
        if name in view.frozen:
            assert path == [0.0] * 10, f"{name} is frozen and must stay flat"
        else:
            assert all(b > a for a, b in zip(path, path[1:], strict=False)) or path[-1] > path[0] > 0, name
    start = view.sim._start  # the distance is from the start, computed here by hand
    moved = torch.linalg.vector_norm(torch.cat([(p.detach() - start[n]).flatten()
                                                for n, p in view.sim.block_parameters("stage5").items()]))
    assert view.history[-1]["distances"][names.index("stage5")] == pytest.approx(float(moved), rel=1e-4)


def test_reset(view):
    view.handle({"action": "train", "steps": 2})
    view.handle({"action": "reset"})
    assert view.sim.step_count == 0 and view.report == {} and view.history == []
    assert view.frozen == HEAD_ONLY, "reset keeps the configuration"


def test_the_table_already_holds_every_switch_case(view):
    """complete_table measured every switch setting up front: a switch sends no new table, so the
    browser (and make book's page, which has no kernel) never waits for a measurement."""
    tables = changes(view, "table")
    keys = {k for segment in view.table["segments"] for k in segment["cases"]}
    assert "1d" in keys    # a frozen block whose BatchNorm trains: the bn_train_when_frozen case
    for bn in (False, True):
        for affine in (False, True):
            view.switches = {"bn_train_when_frozen": bn, "stale_gradients": False, "train_norm_affine": affine}
            assert view.sim.bn_train_when_frozen is bn and view.sim.train_norm_affine is affine
    assert tables == []
    assert not view.sim.needs_measuring()


def test_switches_act_on_the_simulator(view):
    view.switches = {"bn_train_when_frozen": True, "stale_gradients": False, "train_norm_affine": False}
    assert view.sim.bn_train_when_frozen is True
    view.frozen = ["stem", "stage1"]
    view.handle({"action": "step"})
    view.handle({"action": "step"})
    assert view.report["driftedWhileFrozen"] == ["stem", "stage1"]
    view.switches = {"bn_train_when_frozen": False, "stale_gradients": False, "train_norm_affine": False}


def test_stale_gradients_show_in_the_report(view):
    view.switches = {"bn_train_when_frozen": False, "stale_gradients": True, "train_norm_affine": False}
    view.frozen = []
    view.handle({"action": "step"})
    view.frozen = ["stem"]
    view.handle({"action": "step"})
    assert view.report["movedWhileFrozen"] == ["stem"]
    assert next(r for r in view.report["blocks"] if r["name"] == "stem")["movedWhileFrozen"]


def test_norm_affine_preset(view):
    """The "Norm affine + head" preset: head trainable, every frozen block's BatchNorm scale/shift."""
    view.switches = {"bn_train_when_frozen": False, "stale_gradients": False, "train_norm_affine": True}
    assert {k for segment in view.table["segments"] for k in segment["cases"]} >= {"0a", "1a"}
    view.handle({"action": "step"})
    rows = {row["name"]: row for row in view.report["blocks"]}
    assert all(rows[name]["state"] == "a" and rows[name]["gradNorm"] > 0 for name in HEAD_ONLY)
    assert view.report["flow"][-1] == "stem" and view.report["stopAt"] is None


def test_rank_blocks_by_relative_gradient(view, pretrained_mobilenet_v2):
    weights = copy.deepcopy(view.sim.model.state_dict())
    view.handle({"action": "rank"})
    assert view.ranking["step"] == 0 and set(view.ranking["values"]) == set(view.sim.block_names)
    assert all(torch.equal(t, weights[k]) for k, t in view.sim.model.state_dict().items()), "nothing changed"
    assert all(p.grad is None for p in view.sim.model.parameters())
    # By hand: a copy with every block trainable and the same BatchNorm modes, same dropout seed.
    model = copy.deepcopy(view.sim.model)
    model.requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 * 100_003 + 1)
        loss = torch.nn.functional.cross_entropy(model(view.sim.images), view.sim.labels)
    loss.backward()
    for name, value in view.ranking["values"].items():
        params = [model.get_parameter(p) for p in view.sim.block_parameters(name)]
        g = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))
        w = torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in params]))
        assert value == pytest.approx(float(g / w), rel=1e-4), name


def test_pin_and_compare_on_the_same_batch_and_seed(view, pretrained_mobilenet_v2):
    view.handle({"action": "step"})
    before = copy.deepcopy(view.sim.model.state_dict())
    view.handle({"action": "pin"})
    assert view.pinned["state"]["frozen"] == HEAD_ONLY and view.pinned["trainable"] == 12_810
    view.frozen = ["stem", "stage1", "stage2"]
    view.handle({"action": "compare", "steps": 3})
    a, b = view.comparison["a"], view.comparison["b"]
    assert view.comparison["steps"] == 3 and len(a["losses"]) == len(b["losses"]) == 3
    # Same batch, seed and start for both: a fresh simulator per configuration gives the same losses.
    # (Their first losses differ: trainable blocks' BatchNorm normalises with the batch's statistics.)
    for run, frozen in ((a, HEAD_ONLY), (b, ["stem", "stage1", "stage2"])):
        fresh = FreezeSim.from_state(pretrained_mobilenet_v2, {**START, "frozen": frozen})
        assert [r.loss for r in fresh.train(3)] == run["losses"]
        assert run["trainable"] == fresh.trainable_params() and run["backwardFlops"] == fresh.cost().backward_flops
    assert a["backwardFlops"] < b["backwardFlops"] and a["memory"] < b["memory"]
    assert view.sim.step_count == 1 and all(torch.equal(t, before[k]) for k, t in view.sim.model.state_dict().items()), \
        "the comparison leaves the current run as it was"


def test_architecture_picker_without_cached_weights(view, isolated_torch_home):
    view.handle({"action": "arch", "name": "resnet18"})
    try:
        assert view.arch == "resnet18" and view.sim.block_names == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
        assert view.weights_note.startswith("random initialisation: no pretrained weights for resnet18 are cached")
        assert view.frozen == ["stem", "layer1", "layer2", "layer3", "layer4"], "a new model starts as a linear probe"
        view.frozen = ["stem", "layer1", "layer2", "layer3"]
        assert view.sim.cost().flow_sentence() == "gradients flow through fc -> layer4 and stop at layer3"
        view.handle({"action": "step"})
        assert view.report["flow"] == ["fc", "layer4"] and view.report["stopAt"] == "layer3"
    finally:
        view.handle({"action": "arch", "name": "mobilenet_v2"})


def test_scenario_round_trip(view):
    text = "arch=mobilenet_v2&frozen=stem,stage4&seed=3&opt=adam,0.002&switches=bn_train,norm_affine"
    view.handle({"action": "scenario", "text": text})
    assert view.scenario == text
    assert view.frozen == ["stem", "stage4"] and view.seed == 3
    assert view.switches == {"bn_train_when_frozen": True, "stale_gradients": False, "train_norm_affine": True}
    assert view.optimizer["name"] == "adam" and view.optimizer["lr"] == 0.002 and view.optimizer["slots"] == 2
    again = FreezeView.from_scenario(text)
    assert (again.arch, again.frozen, again.switches, again.seed, again.scenario) == \
        (view.arch, view.frozen, view.switches, view.seed, view.scenario)
    assert torch.equal(again.sim.images, view.sim.images), "the same seed: the same batch"


def test_from_scenario_reads_the_page_address(monkeypatch):
    monkeypatch.setenv("QUERY_STRING", "voila-theme=light&arch=mobilenet_v2&frozen=stem&seed=1&opt=sgd,0.05,0.5")
    view = FreezeView.from_scenario()
    assert view.url_state and view.frozen == ["stem"] and view.seed == 1 and view.sim.lr == 0.05
    monkeypatch.delenv("QUERY_STRING")
    plain = FreezeView.from_scenario()
    assert plain.frozen == plain.sim.block_names[:-1], "no address: MobileNetV2 training its head"


def test_errors_show_in_the_widget(view):
    with pytest.raises(ValueError, match="Unknown action 'fly'"):
        view.handle({"action": "fly"})
    assert view.error.startswith("ValueError: Unknown action 'fly'")
    with pytest.raises(scenario.ScenarioError, match="Unknown or repeated scenario keys"):
        view.handle({"action": "scenario", "text": "arch=mobilenet_v2&frozn=stem"})
    assert "ScenarioError" in view.error and view.frozen == HEAD_ONLY, "nothing changed"
    with pytest.raises(KeyError, match="Valid blocks"):
        view.frozen = ["stem", "layer9"]
    assert "layer9" in view.error and view.sim.frozen == set(HEAD_ONLY)
    view.handle({"action": "step"})
    assert view.error == "", "the next action that works clears the message"


def test_view_needs_a_simulator(pretrained_mobilenet_v2):
    with pytest.raises(TypeError, match=r"FreezeView\(FreezeSim\(model\)\)"):
        FreezeView(pretrained_mobilenet_v2)
