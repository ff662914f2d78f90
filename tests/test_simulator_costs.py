"""Cost as a sum of per-block measurements, against measuring each configuration whole.

For random configurations (frozen set and switches) of several architectures, the sum
(``FreezeSim.cost``, which the browser repeats) must equal ``FreezeSim.measure_configuration``,
an independent forward and backward pass of the whole configuration under FlopCounterMode and
saved-tensor hooks with tensor hooks for the path: backward FLOPs and saved activation bytes
to the byte, and the same flow, stop and pass-through blocks. The architectures cover the
special cases: a parameter block (ViT's ``class_token``; torchvision's VisionTransformer with
two narrow layers, for speed), operations before the first block
(GoogLeNet's input transform), an in-place first operation (EfficientNet's Dropout), BatchNorm
everywhere (MobileNetV2 with its real weights) and residual blocks (ResNet).
"""

from __future__ import annotations

import dataclasses
import random
import warnings

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tlhelpers.simulator import FreezeSim, default_batch
from tlhelpers.simulator.measure import ChainError, flop_counter


def small(name: str, size: int = 32, **kwargs) -> FreezeSim:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if name == "vit_tiny":  # torchvision's VisionTransformer, only narrower and shallower
            model = torchvision.models.VisionTransformer(image_size=size, patch_size=16, num_layers=2, num_heads=2,
                                                         hidden_dim=64, mlp_dim=128)
            torch.nn.init.normal_(model.heads.head.weight, std=0.02)
        else:
            model = torchvision.models.get_model(name, weights=None, **kwargs)
    batch = default_batch(size=2, image_size=size, seed=0)
    return FreezeSim(model, batch=(batch.images, batch.labels))


def random_states(sim: FreezeSim, rng: random.Random, count: int):
    for _ in range(count):
        yield {"frozen": [b for b in sim.block_names if rng.random() < 0.5],
               "bn_train_when_frozen": rng.random() < 0.3, "train_norm_affine": rng.random() < 0.3}


def check_sums(sim: FreezeSim, seed: int, count: int) -> None:
    """Compare sum and whole measurement for ``count`` random configurations."""
    for state in random_states(sim, random.Random(seed), count):
        sim.load_state(state)
        summed, whole = sim.cost(), sim.measure_configuration()
        where = f"{state}"
        assert summed.backward_flops == whole.backward_flops, where
        assert summed.forward_flops == whole.forward_flops, where
        assert (summed.flow, summed.stop_at, summed.pass_through) == (whole.flow, whole.stop_at, whole.pass_through), where
        assert summed.saved_activation_bytes == whole.saved_activation_bytes, where


@pytest.fixture(scope="module")
def mobilenet_sim(pretrained_mobilenet_v2) -> FreezeSim:
    return FreezeSim(pretrained_mobilenet_v2)


def test_mobilenet_v2_sums_are_exact(mobilenet_sim):
    check_sums(mobilenet_sim, seed=0, count=8)


@pytest.mark.parametrize("name, kwargs", [
    ("resnet18", {}),
    ("vit_tiny", {}),
    ("efficientnet_b0", {}),
    ("googlenet", {"init_weights": True, "transform_input": True}),
], ids=["resnet18", "vit", "efficientnet_b0", "googlenet"])
def test_sums_are_exact_on_other_architectures(name, kwargs):
    sim = small(name, **kwargs)
    check_sums(sim, seed=1, count=4)
    segments = sim.layout.segments
    if name == "vit_tiny":
        assert segments[1].blocks == ("conv_proj", "class_token"), "class_token joins conv_proj's part"
    if name == "googlenet":
        assert segments[0].entry is None and segments[1].entry == "conv1"  # the input transform runs first


def test_every_block_state_is_measured_once(mobilenet_sim):
    sim = mobilenet_sim.load_state({"frozen": [], "bn_train_when_frozen": False, "train_norm_affine": False})
    sim.clear_measurements()
    table = sim.cost_table()
    keys = {key for cases in table.cases for key in cases}
    assert keys == {"0t", "1f", "1t"}, "trainable first block, and later blocks frozen or trainable"
    sim.load_state({"bn_train_when_frozen": True, "train_norm_affine": True})
    keys = {key for cases in sim.cost_table().cases for key in cases}
    assert keys >= {"0a", "1a"} and "1d" not in keys, "with both switches a frozen block trains its BatchNorm"


def test_frozen_batchnorm_in_train_mode_costs_memory_not_flops(mobilenet_sim):
    sim = mobilenet_sim.load_state({"frozen": ["stem", "stage1", "stage2", "stage3"], "stale_gradients": False,
                                    "bn_train_when_frozen": False, "train_norm_affine": False})
    evaluating = sim.cost()
    sim.load_state({"frozen": ["stem", "stage1", "stage4", "stage5"], "bn_train_when_frozen": True})
    sim.load_state({"frozen": ["stem", "stage1", "stage2", "stage3"]})
    drifting = sim.cost()
    assert drifting.backward_flops == evaluating.backward_flops
    assert drifting.saved_activation_bytes == evaluating.saved_activation_bytes, \
        "frozen blocks before the first trainable one record nothing, whatever their BatchNorm mode"
    sim.load_state({"frozen": ["stage4", "stage5"]})
    pass_through_drifting = sim.cost().saved_activation_bytes
    sim.load_state({"bn_train_when_frozen": False})
    assert pass_through_drifting > sim.cost().saved_activation_bytes, \
        "BatchNorm in train mode saves its batch statistics for backward"


def test_norm_affine_training_reaches_the_first_block(mobilenet_sim):
    head = mobilenet_sim.block_names[-1]
    sim = mobilenet_sim.load_state({"frozen": mobilenet_sim.block_names[:-1], "train_norm_affine": False,
                                    "bn_train_when_frozen": False})
    head_only = sim.cost()
    sim.load_state({"train_norm_affine": True})
    batchnorm = {f"{name}.{p}" for name, m in sim.model.named_modules() if isinstance(m, nn.BatchNorm2d)
                 for p in ("weight", "bias")}
    trainable = {n for n, p in sim.model.named_parameters() if p.requires_grad}
    assert trainable == batchnorm | {n for n, _ in sim.model.named_parameters() if n.startswith(head + ".")}
    cost = sim.cost()
    assert cost.flow_sentence().endswith("all the way to the input") and cost.pass_through == ()
    assert cost.backward_flops > head_only.backward_flops, "cheap in parameters, not in compute"
    report = sim.step()
    assert all(b.frozen and b.trainable_params and b.grad_norm > 0 for b in report.blocks.values() if b.name != head)
    assert report.moved_while_frozen == [], "scale and shift moved because they train, not by accident"


# --------------------------------------------------------------------------- FLOP formula

def test_grouped_convolution_backward_flops():
    """Each requested gradient of a convolution costs one forward's worth of multiply-adds."""
    conv = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
    x = torch.randn(8, 32, 16, 16, requires_grad=True)
    forward = 2 * 8 * 32 * 16 * 16 * 3 * 3  # one multiply-add (2 FLOPs) per weight per output pixel
    with flop_counter() as counter:
        y = conv(x)
    assert counter.get_total_flops() == forward
    for inputs, gradients in (([conv.weight], 1), ([x], 1), ([x, conv.weight], 2)):
        with flop_counter() as ours:
            torch.autograd.grad(y.sum(), inputs, retain_graph=True)
        assert ours.get_total_flops() == gradients * forward
    with FlopCounterMode(display=False) as torchs:  # torch's own formula, as measure.py describes it
        torch.autograd.grad(y.sum(), [conv.weight], retain_graph=True)
    assert torchs.get_total_flops() == 32 * forward, (
        "torch's conv_backward_flop no longer counts the weight gradient `groups` times over: update "
        "the docstring of tlhelpers.simulator.measure._conv_backward_flop (and maybe drop FLOP_FORMULAS)")


# --------------------------------------------------------------------------- blocks that are no chain

class SkipAcross(nn.Module):
    """``b`` adds ``a``'s output back after itself: a skip connection across two blocks."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        h = self.a(x)
        return self.fc((self.b(h) + h).mean((2, 3)))


class Reused(SkipAcross):
    """``a`` runs again after ``b``."""

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean((2, 3)) + self.a.bias.sum())


def tiny_batch():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2])


def test_a_skip_connection_across_blocks_is_refused_with_advice():
    torch.manual_seed(0)
    sim = FreezeSim(SkipAcross(), blocks={"a": "a", "b": "b", "fc": "fc"}, batch=tiny_batch())
    with pytest.raises(ChainError, match="output of block 'b' depends on a tensor from an earlier block.*merge"):
        sim.cost()
    merged = FreezeSim(SkipAcross(), blocks={"ab": ["a", "b"], "fc": "fc"}, batch=tiny_batch())
    assert merged.cost() == dataclasses.replace(merged.measure_configuration(), measure_ms=0.0)


def test_blocks_must_run_one_after_another():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="Block 'a' runs again after block 'b' started"):
        FreezeSim(Reused(), blocks={"a": "a", "b": "b", "fc": "fc"}, batch=tiny_batch())


def test_a_block_the_forward_pass_never_uses_is_refused():
    torch.manual_seed(0)
    model = SkipAcross()
    model.spare = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="'spare' take no part in the forward pass"):
        FreezeSim(model, blocks={"ab": ["a", "b"], "fc": "fc", "spare": "spare"}, batch=tiny_batch())
