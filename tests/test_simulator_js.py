"""The widget's JavaScript computes what the Python side computes, without a kernel.

``static/freeze_view.js`` redraws a toggle in the browser from the per-block table: block
states, the backward path, the summed cost, the training memory, the flow sentence, the
scenario string and the number formats must all equal the Python answers. This runs the
module's exported functions in node (Debian's ``nodejs``) on 120 random configurations each of
MobileNetV2 (BatchNorm everywhere), a small ViT (a parameter block) and ResNet-18 (residual
blocks) and compares every answer. Without node it skips on a learner's machine and fails
under CI, which installs it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
import torchvision

from tlhelpers.simulator import FreezeSim, default_batch, describe_flow, scenario, vocabulary
from tlhelpers.simulator.figure import human, share_text
from tlhelpers.simulator.view import block_rows

JS = Path(__file__).resolve().parents[1] / "tlhelpers" / "simulator" / "static" / "freeze_view.js"
NODE = shutil.which("node") or shutil.which("nodejs")


@pytest.fixture(scope="module")
def node() -> str:
    """node's path; a skip on a learner's machine without it, a failure under CI (.ci/run installs it)."""
    if NODE is None:
        message = "node is not installed (Debian package nodejs)"
        if os.environ.get("CI"):
            pytest.fail(message + " and CI is set: .ci/run installs it, so this is a failure, not a skip")
        pytest.skip(message + "; the browser test still checks the drawn costs")
    return NODE

RUNNER = r"""
const fs = require("fs");
const [source, inputs] = [fs.readFileSync(process.argv[2], "utf8"), JSON.parse(fs.readFileSync(process.argv[3], "utf8"))];
import("data:text/javascript;base64," + Buffer.from(source).toString("base64")).then((js) => {
  js.useVocabulary(inputs.vocabulary);
  const out = inputs.cases.map((c) => {
    const states = js.blockStates(inputs.blocks, c.frozen, c.switches);
    const path = js.backwardPath(inputs.table.order, inputs.table.parameterBlocks, states);
    const cost = js.configurationCost(inputs.table, states);
    const memory = js.trainingMemory(inputs.blocks, states, cost.saved, inputs.slots);
    return { states, path, cost: { backwardFlops: cost.backwardFlops, saved: cost.saved, missing: cost.missing },
             memory, sentence: js.flowSentence(path.flow, path.stopAt),
             scenario: js.scenarioWith(inputs.base, inputs.table.order, c.frozen, c.switches) };
  });
  const numbers = inputs.numbers.map(([v, r]) => [js.human(v, "B"), js.shareText(v, r)]);
  const presets = ["probe", "last", "lastk", "affine", "first", "all"].map((k) => js.preset(k, inputs.table.order, inputs.head, 3));
  process.stdout.write(JSON.stringify({ out, numbers, presets }));
});
"""


def vit() -> FreezeSim:
    """torchvision's VisionTransformer, narrow and shallow: a parameter block, quickly."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=64, mlp_dim=128)
    batch = default_batch(size=2, image_size=32)
    return FreezeSim(model, batch=(batch.images, batch.labels))


def resnet() -> FreezeSim:
    """ResNet-18 (random weights): residual blocks and a plain fc head, a third layout."""
    torch.manual_seed(0)
    batch = default_batch(size=2, image_size=32)
    return FreezeSim(torchvision.models.resnet18(weights=None), batch=(batch.images, batch.labels))


def run_node(node: str, inputs: dict, tmp_path: Path) -> dict:
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))
    (tmp_path / "runner.cjs").write_text(RUNNER)
    done = subprocess.run([node, str(tmp_path / "runner.cjs"), str(JS), str(tmp_path / "inputs.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("which", ["mobilenet_v2", "vit", "resnet18"])
def test_javascript_matches_python(which, node, pretrained_mobilenet_v2, tmp_path):
    sim = {"mobilenet_v2": lambda: FreezeSim(pretrained_mobilenet_v2), "vit": vit, "resnet18": resnet}[which]()
    rng = random.Random(7)
    cases = []
    for _ in range(120):
        switches = {"bn_train_when_frozen": rng.random() < 0.4, "stale_gradients": rng.random() < 0.3,
                    "train_norm_affine": rng.random() < 0.4}
        frozen = [b for b in sim.block_names if rng.random() < 0.5]
        cases.append({"frozen": frozen, "switches": switches})
    for bn in (False, True):  # measure every case of every switch: the browser gets them all
        for affine in (False, True):
            sim.load_state({"bn_train_when_frozen": bn, "train_norm_affine": affine}).cost_table()
    state = sim.state()
    numbers = [[rng.choice([0, 1, 7, 999, 1000, 1234, 99_949, 1e5 + 1, 2.5e6, 123_456_789, 9.9949e8, 4.2e10]),
                rng.choice([1, 1000, 1e6, 5e9])] for _ in range(60)] + [[995, 1000], [4, 1000], [1, 0], [1000, 1000],
                                                            [12_810, 2_236_682], [99_549, 1e6], [99_951, 1e6], [4, 1e5]]
    inputs = {"blocks": block_rows(sim), "table": sim.cost_table().to_json(), "cases": cases,
              "slots": sim.optimizer_slots(), "base": scenario.encode(which, state), "numbers": numbers,
              "head": sim.head_block, "vocabulary": vocabulary.for_browser()}
    result = run_node(node, inputs, tmp_path)

    for case, js in zip(cases, result["out"], strict=True):
        states = sim.states_for(case["frozen"], case["switches"]["bn_train_when_frozen"],
                                case["switches"]["train_norm_affine"])
        cost = sim.cost(states)
        memory = sim.training_memory(states)
        assert js["states"] == states, case
        assert (js["path"]["flow"], js["path"]["stopAt"], js["path"]["passThrough"]) == \
            (list(cost.flow), cost.stop_at, list(cost.pass_through)), case
        assert js["cost"] == {"backwardFlops": cost.backward_flops, "saved": cost.saved_activation_bytes,
                              "missing": False}, case
        assert js["memory"] == {"trainable": sim.trainable_params(states), "activations": memory["activations"],
                                "gradients": memory["gradients"], "optimizer": memory["optimizer"],
                                "total": sum(memory.values())}, case
        assert js["sentence"] == describe_flow(cost.flow, cost.stop_at)
        assert js["scenario"] == scenario.encode(which, {**state, "frozen": [b for b in sim.block_names
                                                                             if b in case["frozen"]],
                                                         **case["switches"]})
    assert result["numbers"] == [[human(v, "B"), share_text(v, r)] for v, r in numbers]
    names, head = sim.block_names, sim.head_block
    expected = [names[:-1] if head == names[-1] else [n for n in names if n != head],
                [n for n in names if n not in (head, [m for m in names if m != head][-1])],
                names[:-3], [n for n in names if n != head], names[1:], []]
    assert [p["frozen"] for p in result["presets"]] == expected
    assert [p["switches"]["train_norm_affine"] for p in result["presets"]] == [False, False, False, True, False, False]


def test_the_javascript_keeps_no_copy_of_the_vocabulary():
    """States and switches are defined once, in Python, and sent to the widget: a new switch is one edit."""
    source = JS.read_text()
    words = list(vocabulary.STATE_WORDS.values())[2:] + [label for _, _, label in vocabulary.SWITCHES]
    words += [f'"{short}"' for _, short, _ in vocabulary.SWITCHES]
    assert not [w for w in words if w in source], "freeze_view.js repeats words vocabulary.py defines"


# --------------------------------------------------------------------------- scenario strings read back in JS

#: Calls exported functions by name: {"vocabulary": ..., "calls": [[name, [args...]], ...]} -> one
#: {"value": ...} or {"error": {"name", "message"}} per call. Numbers that JSON cannot hold
#: (inf, nan) come back as the strings "Infinity", "-Infinity", "NaN".
CALL_RUNNER = r"""
const fs = require("fs");
const [source, inputs] = [fs.readFileSync(process.argv[2], "utf8"), JSON.parse(fs.readFileSync(process.argv[3], "utf8"))];
import("data:text/javascript;base64," + Buffer.from(source).toString("base64")).then((js) => {
  js.useVocabulary(inputs.vocabulary);
  const out = inputs.calls.map(([name, args]) => {
    try { return { value: js[name](...args) }; }
    catch (error) { return { error: { name: error.name, message: error.message } }; }
  });
  process.stdout.write(JSON.stringify(out, (key, value) =>
    typeof value === "number" && !Number.isFinite(value) ? String(value) : value));
});
"""


def call_js(node: str, calls: list, tmp_path: Path) -> list:
    (tmp_path / "calls.json").write_text(json.dumps({"vocabulary": vocabulary.for_browser(), "calls": calls}))
    (tmp_path / "calls.cjs").write_text(CALL_RUNNER)
    done = subprocess.run([node, str(tmp_path / "calls.cjs"), str(JS), str(tmp_path / "calls.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _finite(value):
    """A Python answer as the runner writes it (inf and nan as strings)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return {float("inf"): "Infinity", float("-inf"): "-Infinity"}.get(value, "NaN")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


ODD_STATE = {"frozen": ["a,b", "über", "x y", "50%", "p&q=r"], "seed": 12, "bn_train_when_frozen": True,
             "stale_gradients": False, "train_norm_affine": True, "optimizer": "adam", "lr": 1e-05, "momentum": 0.0}
VALID_SCENARIOS = [
    scenario.EXAMPLE,
    "arch=resnet18&frozen=stem,layer1,layer2,layer3&seed=0&opt=sgd,0.01,0.9&switches=bn_train",
    scenario.encode("vit_b_16", ODD_STATE),
    scenario.encode("my model/v2", {**ODD_STATE, "optimizer": "sgd", "lr": 0.1, "momentum": 0.0}),
    "frozen=&switches=", "seed=-3", "seed=007", "opt=adam,1e-05", "opt=sgd, 0.01 ,1_0.5", "opt=sgd,.5,5.",
    "opt=adam,-inf", "opt=sgd,1E3,+0.9",
    "http://127.0.0.1:8866/voila/render/simulator.ipynb?foo=1&arch=mobilenet_v2&frozen=stem&voila-x=2#frag",
    "  arch=mobilenet_v2&seed=7  ", "%61rch=resnet18", "arch=resnet%31%38", "arch=",
    "switches=stale,norm_affine,bn_train", "frozen=a%2Cb,c%,%zz,%C3%A9,%C3", "&&arch=x&&", "arch=x#seed=1",
]
INVALID_SCENARIOS = [
    "", "   ", "hello", "arch=x&arch=y", "foo=1", "arch=x&frozen", "seed=1.5", "seed=", "seed=+1",
    "opt=sgd,0.01", "opt=adam,x", "opt=rmsprop,0.1", "opt=sgd,,0.9", "opt=sgd,1__0,0.9", "opt=sgd,1_,0.9",
    "opt=adam", "switches=turbo", "switches=bn_train,bn_training", "http://host/page", "http://host/page?x=1",
    "#arch=x",
]


def _python_decode(text: str) -> dict:
    try:
        arch, state = scenario.decode(text)
    except scenario.ScenarioError as error:
        return {"error": str(error)}
    return {"value": {"arch": arch, "state": _finite(state)}}


def test_javascript_decoder_matches_the_python_parser(node, tmp_path):
    texts = VALID_SCENARIOS + INVALID_SCENARIOS
    results = call_js(node, [["decodeScenario", [t]] for t in texts], tmp_path)
    for text, js in zip(texts, results, strict=True):
        py = _python_decode(text)
        if "error" in py:
            assert "error" in js, f"Python rejects {text!r} ({py['error']}), JS read {js}"
            assert js["error"]["name"] == "ScenarioError", js
            assert js["error"]["message"].split()[:2] == py["error"].split()[:2], (text, js, py)
        else:
            assert js == py, text
    assert sum("value" in r for r in results) == len(VALID_SCENARIOS)
    # A scenario the widget writes (scenarioWith) reads back to the same state in both languages.
    state = {**ODD_STATE, "frozen": ["a,b", "x y"]}
    js_written = call_js(node, [["scenarioWith", [scenario.encode("vit", state), ["a,b", "über", "x y"],
                                                  ["x y", "a,b"], {"bn_train_when_frozen": False,
                                                                   "train_norm_affine": True}]]], tmp_path)
    text = js_written[0]["value"]
    expected = {k: v for k, v in state.items() if k != "momentum"}  # Adam's scenario has no momentum
    assert scenario.decode(text) == ("vit", {**expected, "bn_train_when_frozen": False})


def test_scenario_links_for_a_static_page(node, tmp_path):
    """Offline mode: Copy gives page-address-without-hash + #scenario=encodeURIComponent(scenario);
    on load the widget reads that hash back (also a hand-written one with the & left unencoded)."""
    page = "http://127.0.0.1:8000/site/simulator.html?x=1"
    texts = [scenario.EXAMPLE, scenario.encode("vit_b_16", ODD_STATE), "arch=resnet18&frozen=&seed=0&opt=adam,0.001&switches="]
    calls = [["scenarioLink", [page + "#old&scenario=zzz", t]] for t in texts]
    links = [r["value"] for r in call_js(node, calls, tmp_path)]
    assert links == [f"{page}#scenario={quote(t, safe=URI_COMPONENT_SAFE)}" for t in texts]
    hashes = ["#" + link.split("#", 1)[1] for link in links]
    hashes += ["#scenario=" + texts[0], f"#top&scenario={quote(texts[1], safe='')}&theme=dark",
               "#section-2", "", "#scenario=" + texts[0] + "&theme=dark"]
    read = [r["value"] for r in call_js(node, [["scenarioFromHash", [h]] for h in hashes], tmp_path)]
    assert read == texts + [texts[0], texts[1], None, None, texts[0]]
    for text in read[:5]:
        assert _python_decode(text)["value"]["arch"]


URI_COMPONENT_SAFE = "-_.!~*'()"  # what encodeURIComponent leaves alone


def test_what_a_static_page_applies_of_a_scenario(node, tmp_path):
    order = ["stem", "stage1", "stage2", "classifier"]
    page = {"arch": "mobilenet_v2", "order": order, "seed": 0,
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "slots": 1}}
    texts = ["arch=mobilenet_v2&frozen=stage1,stem&seed=0&opt=sgd,0.01,0.9&switches=bn_train",
             "arch=mobilenet_v2&frozen=stem,bogus&seed=3&opt=adam,0.001&switches=",
             "arch=resnet18&frozen=stem,layer1&seed=0&opt=sgd,0.01,0.9&switches=norm_affine",
             "frozen=stage2"]
    calls = [["decodeScenario", [t]] for t in texts]
    decoded = [r["value"] for r in call_js(node, calls, tmp_path)]
    plans = [r["value"] for r in call_js(node, [["scenarioToApply", [d, page]] for d in decoded], tmp_path)]
    off = {key: False for key, _, _ in vocabulary.SWITCHES}
    assert plans[0] == {"frozen": ["stem", "stage1"], "switches": {**off, "bn_train_when_frozen": True}, "skipped": []}
    assert plans[1]["frozen"] == ["stem"] and plans[1]["switches"] == off
    assert [s.split()[0] for s in plans[1]["skipped"]] == ["mobilenet_v2", "seed=3", "opt=adam,0.001"]
    assert "bogus" in plans[1]["skipped"][0]
    assert plans[2]["frozen"] is None and plans[2]["switches"] == {**off, "train_norm_affine": True}
    assert plans[2]["skipped"] == ["arch=resnet18 is not the model on this page (mobilenet_v2), "
                                   "so its frozen blocks were not applied"]
    assert plans[3] == {"frozen": ["stage2"], "switches": None, "skipped": []}
