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
    for i in range(120):
        switches = {"bn_train_when_frozen": rng.random() < 0.4, "stale_gradients": rng.random() < 0.3,
                    "train_norm_affine": rng.random() < 0.4}
        frozen = [b for b in sim.block_names if rng.random() < 0.5]
        cases.append({"frozen": frozen, "switches": switches})
    for bn in (False, True):  # measure every case of every switch: the browser gets them all
        for affine in (False, True):
            sim.load_state({"bn_train_when_frozen": bn, "train_norm_affine": affine}).cost_table()
    state = sim.state()
    numbers = [[rng.choice([0, 1, 7, 999, 1000, 1234, 99_949, 1e5 + 1, 2.5e6, 123_456_789, 9.9949e8, 4.2e10]),
                rng.choice([1, 1000, 1e6, 5e9])] for _ in range(60)] + [[995, 1000], [4, 1000], [1, 0], [1000, 1000]]
    inputs = {"blocks": block_rows(sim), "table": sim.cost_table().to_json(), "cases": cases,
              "slots": sim.optimizer_slots(), "base": scenario.encode(which, state), "numbers": numbers,
              "head": sim.head_block, "vocabulary": vocabulary.for_browser()}
    result = run_node(node, inputs, tmp_path)

    for case, js in zip(cases, result["out"]):
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
