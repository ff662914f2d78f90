"""FreezeSim against independent computation, on the real MobileNetV2 ImageNet weights and a
real Fashion-MNIST batch (8 images, 64 px).

The simulator's report is never checked against itself: each test looks at the model's own
parameters, gradients and BatchNorm buffers, or works a number out by hand.
"""

from __future__ import annotations

import json

import pytest
import torch

from tlhelpers.simulator import FreezeSim, StepReport, default_batch, describe_flow

EARLY = ["stem", "stage1", "stage2", "stage3"]
BLOCKS = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "head_conv", "classifier"]
START = {"frozen": [], "seed": 0, "bn_train_when_frozen": False, "stale_gradients": False,
         "train_norm_affine": False, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9}


@pytest.fixture(scope="module")
def shared_sim(pretrained_mobilenet_v2) -> FreezeSim:
    """One simulator per module: building it and measuring each configuration costs time."""
    return FreezeSim(pretrained_mobilenet_v2)


@pytest.fixture
def sim(shared_sim) -> FreezeSim:
    """The shared simulator, back at the start: nothing frozen, switches off, step 0."""
    return shared_sim.load_state(START)


def block_params(sim: FreezeSim, name: str) -> dict[str, torch.nn.Parameter]:
    prefixes = sim.blocks[name]
    return {n: p for n, p in sim.model.named_parameters()
            if any(n == pre or n.startswith(pre + ".") for pre in prefixes)}


def snapshot(sim: FreezeSim) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in sim.model.state_dict().items()}


def freeze(sim: FreezeSim, *names: str) -> None:
    for name in names:
        sim.set_frozen(name, True)


# --------------------------------------------------------------------------- the basics

def test_default_setup(sim, pretrained_mobilenet_v2):
    assert sim.block_names == BLOCKS
    assert sim.images.shape == (8, 3, 64, 64) and sim.labels.shape == (8,)
    assert sim.model.classifier[1].out_features == 10, "the ImageNet head is replaced for 10 classes"
    assert pretrained_mobilenet_v2.classifier[1].out_features == 1000, "the model passed in is not changed"
    assert sim.frozen == set() and sim.step_count == 0


def test_frozen_blocks_get_no_gradient_and_do_not_move(sim):
    freeze(sim, *EARLY)
    before = snapshot(sim)
    report = sim.step()
    assert isinstance(report, StepReport) and report.step == 1
    for name in BLOCKS:
        params = block_params(sim, name)
        row = report.blocks[name]
        moved = [torch.linalg.vector_norm(p.detach() - before[n]) for n, p in params.items()]
        if name in EARLY:
            assert all(p.grad is None for p in params.values()), name
            assert all(float(m) == 0.0 for m in moved), name
            assert row.frozen and row.grad_norm is None and row.weight_delta == 0.0
            assert row.trainable_params == 0
        else:
            grads = [p.grad for p in params.values()]
            assert all(g is not None for g in grads), name
            expected_norm = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
            expected_delta = float(torch.linalg.vector_norm(torch.stack(moved)))
            assert row.grad_norm == pytest.approx(expected_norm, rel=1e-4) and row.grad_norm > 0
            assert row.weight_delta == pytest.approx(expected_delta, rel=1e-4) and row.weight_delta > 0
            assert row.trainable_params == sum(p.numel() for p in params.values())
    assert report.trainable_params == sum(p.numel() for p in sim.model.parameters() if p.requires_grad)
    assert report.step_ms > 0 and report.loss > 0


def test_first_step_matches_a_hand_written_training_step(sim, pretrained_mobilenet_v2):
    """Same loss and same updated weights as a plain PyTorch loop on the same batch."""
    freeze(sim, *EARLY)
    model = sim.model
    start = snapshot(sim)
    report = sim.step()
    after = snapshot(sim)

    model.load_state_dict(start)  # redo the step by hand on the very same model
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d) and not any(p.requires_grad for p in module.parameters()):
            module.eval()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    model.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 * 100_003 + 1)  # the simulator seeds dropout with seed and step
        loss = torch.nn.functional.cross_entropy(model(sim.images), sim.labels)
    loss.backward()
    optimizer.step()
    assert float(loss.detach()) == pytest.approx(report.loss, rel=1e-5)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, after[name], rtol=1e-5, atol=1e-6, msg=name)


# --------------------------------------------------------------------------- gradient path

def test_flow_sentence_and_pass_through(sim):
    freeze(sim, "stem", "stage1", "stage2", "stage5")
    report = sim.step()
    assert report.flow == ("classifier", "head_conv", "stage5", "stage4", "stage3")
    assert report.stop_at == "stage2"
    assert report.flow_sentence() == ("gradients flow through classifier -> head_conv -> stage5 -> "
                                      "stage4 -> stage3 and stop at stage2")
    assert [n for n, b in report.blocks.items() if b.pass_through] == ["stage5"]
    assert report.blocks["stage5"].grad_norm is None

    # Independently: backward reaches a block's input exactly when that input requires grad.
    inputs = {}
    hooks = [sim.model.get_submodule(sim.blocks[name][0]).register_forward_pre_hook(
        lambda _m, args, name=name: inputs.__setitem__(name, args[0])) for name in BLOCKS]
    try:
        sim.model.eval()
        sim.model(sim.images)
    finally:
        for hook in hooks:
            hook.remove()
    assert inputs["stage5"].requires_grad, "stage5 is frozen but must pass gradients to stage4"
    assert inputs["stage4"].requires_grad
    assert not inputs["stage3"].requires_grad, "nothing before stage3 needs a gradient"


def test_flow_all_trainable_and_all_frozen(sim):
    assert sim.cost().flow_sentence().endswith("stage1 -> stem, all the way to the input")
    freeze(sim, *BLOCKS)
    before = snapshot(sim)
    report = sim.step()
    assert report.flow == () and report.stop_at is None
    assert report.flow_sentence() == describe_flow((), None)
    assert "no block is trainable" in report.flow_sentence()
    assert report.backward_flops == 0 and report.saved_activation_bytes == 0
    assert report.trainable_params == 0
    assert all(b.grad_norm is None and b.weight_delta == 0.0 for b in report.blocks.values())
    assert all(torch.equal(t, before[n]) for n, t in sim.model.state_dict().items())


# --------------------------------------------------------------------------- compute and memory

def test_freezing_more_never_increases_backward_flops(sim):
    chain = [[], ["stage5"], ["stage5", "stem"], ["stage5", "stem", "stage1"],
             ["stage5", "stem", "stage1", "classifier"],
             ["stage5", "stem", "stage1", "classifier", "stage2", "stage3"], BLOCKS]
    costs = []
    for frozen in chain:
        sim.load_state({"frozen": frozen})
        costs.append(sim.cost())
    backward = [c.backward_flops for c in costs]
    saved = [c.saved_activation_bytes for c in costs]
    assert all(a >= b for a, b in zip(backward, backward[1:], strict=False)), backward
    assert all(a >= b for a, b in zip(saved, saved[1:], strict=False)), saved
    assert backward[0] > backward[1] > backward[2] and backward[-1] == 0
    assert len({c.forward_flops for c in costs}) == 1, "freezing does not change the forward pass"
    assert costs[0] == sim.baseline()


def test_flops_and_saved_bytes_by_hand(sim):
    # Only the classifier trains: backward is one matrix product for the weight gradient,
    # (8 x 10)^T (8 x 1280): 2 * 8 * 1280 * 10 FLOPs. Nothing before it needs a gradient.
    freeze(sim, *BLOCKS[:-1])
    cost = sim.cost()
    assert cost.backward_flops == 2 * 8 * 1280 * 10
    # Saved for backward: the classifier's input (8 x 1280 float32) plus the loss's few bytes.
    assert 8 * 1280 * 4 <= cost.saved_activation_bytes <= 8 * 1280 * 4 + 2048
    # Everything trainable: each convolution's backward computes an input gradient and a weight
    # gradient, each as costly as its forward. About twice the forward pass, including the
    # depthwise convolutions that torch's own formula overcounts.
    baseline = sim.baseline()
    assert 1.8 < baseline.backward_flops / baseline.forward_flops < 2.05


def test_blocks_are_measured_once_then_every_configuration_is_a_sum(sim):
    freeze(sim, "stem")
    sim.clear_measurements()
    first, second = sim.step(), sim.step()
    assert first.measure_ms > 0 and second.measure_ms == 0.0
    assert first.cost == second.cost
    for name in ("stage2", "classifier", "stem"):  # new configurations: nothing is measured again
        sim.set_frozen(name, name != "stem")
        assert sim.step().measure_ms == 0.0
    sim.bn_train_when_frozen = True  # frozen BatchNorm in train mode is a new case: measured once
    assert sim.step().measure_ms > 0
    sim.set_frozen("stage4", True)
    assert sim.step().measure_ms == 0.0


def test_measuring_changes_nothing(sim):
    freeze(sim, *EARLY)
    sim.bn_train_when_frozen = True
    before = snapshot(sim)
    sim.clear_measurements()
    sim.cost()
    sim.baseline()
    assert all(torch.equal(t, before[n]) for n, t in sim.model.state_dict().items())
    assert all(p.grad is None for p in sim.model.parameters())
    assert sim.frozen == set(EARLY)


# --------------------------------------------------------------------------- teaching switches

def bn_means(sim: FreezeSim, name: str) -> list[torch.Tensor]:
    return [m.running_mean.clone() for module in sim.blocks[name]
            for m in sim.model.get_submodule(module).modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_batchnorm_drift_only_with_the_switch(sim):
    freeze(sim, *EARLY)
    before = {n: bn_means(sim, n) for n in BLOCKS}
    report = sim.step()
    for name in EARLY:
        assert report.blocks[name].bn_drift == 0.0
        assert all(torch.equal(a, b) for a, b in zip(bn_means(sim, name), before[name], strict=True))
    assert report.drifted_while_frozen == []
    assert report.blocks["stage4"].bn_drift > 0, "trainable blocks' statistics follow the data"

    sim.load_state({"frozen": EARLY, "bn_train_when_frozen": True})
    before = {n: bn_means(sim, n) for n in BLOCKS}
    report = sim.step()
    for name in EARLY:
        changes = [a - b for a, b in zip(bn_means(sim, name), before[name], strict=True)]
        expected = torch.linalg.vector_norm(torch.cat(changes))
        assert report.blocks[name].bn_drift == pytest.approx(float(expected), rel=1e-4)
        assert report.blocks[name].bn_drift > 0
        assert report.blocks[name].weight_delta == 0.0, "drift is statistics, not weights"
    assert report.drifted_while_frozen == EARLY


@pytest.mark.parametrize("stale", [False, True], ids=["default", "stale-gradients"])
def test_stale_gradients_move_frozen_weights(sim, stale):
    sim.stale_gradients = stale
    sim.step()  # everything trains once: the optimizer builds momentum for every block
    freeze(sim, "stem", "stage1")
    before = snapshot(sim)
    report = sim.step()
    for name in ("stem", "stage1"):
        params = block_params(sim, name)
        moved = any(not torch.equal(p.detach(), before[n]) for n, p in params.items())
        assert report.blocks[name].grad_norm is None
        assert moved is stale, name
        assert (report.blocks[name].weight_delta > 0) is stale
    assert report.moved_while_frozen == (["stem", "stage1"] if stale else [])


def test_stale_gradients_need_earlier_training(sim):
    """Blocks frozen from the start never had a gradient: even the stale optimizer skips them."""
    sim.load_state({"frozen": ["stem"], "stale_gradients": True})
    before = snapshot(sim)
    sim.step()
    assert all(torch.equal(p.detach(), before[n]) for n, p in block_params(sim, "stem").items())


# --------------------------------------------------------------------------- reset and state

def test_reset_restores_weights_and_replays_identically(sim):
    freeze(sim, "stem")
    start = snapshot(sim)
    first = sim.step()
    sim.step()
    assert any(not torch.equal(t, start[n]) for n, t in sim.model.state_dict().items())
    sim.reset()
    assert sim.step_count == 0 and sim.history == []
    assert all(torch.equal(t, start[n]) for n, t in sim.model.state_dict().items())
    assert all(p.grad is None for p in sim.model.parameters())
    assert sim.frozen == {"stem"}, "reset keeps the experiment's configuration"
    again = sim.step()
    assert again.loss == first.loss
    assert [b.weight_delta for b in again.blocks.values()] == [b.weight_delta for b in first.blocks.values()]


def test_state_round_trips(sim, pretrained_mobilenet_v2):
    state = {"frozen": ["stem", "stage1", "head_conv"], "seed": 3, "bn_train_when_frozen": True,
             "stale_gradients": True, "train_norm_affine": True, "optimizer": "adam", "lr": 0.002,
             "momentum": 0.5}
    sim.load_state(state)
    assert sim.state() == state
    text = json.dumps(sim.state())
    copy = FreezeSim.from_state(pretrained_mobilenet_v2, json.loads(text))
    assert copy.state() == state
    assert torch.equal(copy.images, sim.images), "the seed chooses the same batch"
    assert torch.equal(copy.model.classifier[1].weight, sim.model.classifier[1].weight)
    assert copy.step().loss == sim.step().loss


def test_seed_changes_batch_and_head(sim):
    images, head = sim.images.clone(), sim.model.classifier[1].weight.detach().clone()
    sim.load_state({"seed": 1})
    assert not torch.equal(sim.images, images)
    assert not torch.equal(sim.model.classifier[1].weight, head)
    sim.load_state({"seed": 0})
    assert torch.equal(sim.images, images)
    assert torch.equal(sim.model.classifier[1].weight, head)


def test_report_is_json_serialisable(sim):
    data = sim.step().to_dict()
    assert json.loads(json.dumps(data))["blocks"][0]["name"] == "stem"
    assert data["flow_sentence"].startswith("gradients flow through classifier")


# --------------------------------------------------------------------------- clear errors

def test_bad_block_name_lists_the_valid_ones(sim):
    with pytest.raises(KeyError, match="Unknown block 'stage9'. Valid blocks: stem, stage1, .*classifier"):
        sim.set_frozen("stage9", True)
    with pytest.raises(KeyError, match="'layer4'.*Valid blocks: stem"):
        sim.load_state({"frozen": ["stem", "layer4"]})
    assert sim.frozen == set(), "nothing changed"
    with pytest.raises(ValueError, match="Unknown state keys \\['frozne'\\]"):
        sim.load_state({"frozne": []})
    with pytest.raises(ValueError, match="optimizer must be one of"):
        sim.load_state({"optimizer": "lbfgs"})


def test_bad_blocks_and_batch(pretrained_mobilenet_v2):
    with pytest.raises(KeyError, match="names module.*features.99"):
        FreezeSim(pretrained_mobilenet_v2, blocks={"early": ["features.0"], "late": ["features.99"]})
    with pytest.raises(ValueError, match="share parameter 'features.1.conv"):
        FreezeSim(pretrained_mobilenet_v2, blocks={"a": ["features"], "b": ["features.1"]})
    with pytest.raises(TypeError, match="pair \\(images, labels\\)"):
        FreezeSim(pretrained_mobilenet_v2, batch=torch.zeros(2, 3, 32, 32))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        FreezeSim("mobilenet_v2")


# --------------------------------------------------------------------------- any model

def test_resnet_with_its_own_batch_and_blocks(resnet18):
    batch = default_batch(size=4, image_size=32, seed=1)
    resnet18.requires_grad_(False)
    resnet18.layer4.requires_grad_(True)
    resnet18.fc.requires_grad_(True)
    sim = FreezeSim(resnet18, batch=(batch.images, batch.labels))
    assert sim.block_names == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert sim.frozen == {"stem", "layer1", "layer2", "layer3"}, "read from the model's own flags"
    assert sim.model.fc.out_features == 1000, "with your own batch the head is left alone"
    sim.set_frozen("layer3", False)
    report = sim.step()
    assert report.flow_sentence() == "gradients flow through fc -> layer4 -> layer3 and stop at layer2"
    assert report.blocks["layer2"].grad_norm is None and report.blocks["layer3"].grad_norm > 0
    assert resnet18.layer3[0].conv1.weight.requires_grad is False, "the model passed in is not changed"
