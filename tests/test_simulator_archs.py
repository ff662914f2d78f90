"""FreezeSim on every kind of torchvision classifier: one real step, checked on the model itself.

Random weights (``weights=None``, seeded), two real Fashion-MNIST images at the smallest size
each architecture takes, and the model's own 1000-class head (our batch's labels are 0-9).
The last block or two train, the rest is frozen. After one step, each block is checked on the
simulator's own PyTorch model (not on its report): frozen blocks have no gradient and did not
move, trainable blocks have gradients and moved; the report must agree, its flow sentence must
name the path worked out by hand, and its costs must be positive and below training everything.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

from tlhelpers.simulator import FreezeSim, default_batch

#: name -> (builder keyword arguments, image size). Inception v3 needs at least 75 px.
ARCHITECTURES = {
    "resnet18": ({}, 32),
    "mobilenet_v2": ({}, 32),
    "efficientnet_b0": ({}, 32),
    "convnext_tiny": ({}, 32),
    "vit_b_16": ({"image_size": 32}, 32),
    "swin_t": ({}, 32),
    "squeezenet1_0": ({}, 32),
    "inception_v3": ({"init_weights": True}, 75),
    "googlenet": ({"init_weights": True}, 32),
    "regnet_x_400mf": ({}, 32),
    "densenet121": ({}, 32),
}


def build(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    kwargs, size = ARCHITECTURES[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. inception's scipy-free init notice
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    if name.startswith("vit"):  # torchvision starts ViT's head at zero: no gradient would flow back
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    batch = default_batch(size=2, image_size=size, seed=0)
    return model, (batch.images, batch.labels)


def expected_flow(names: list[str], trainable: list[str]) -> str:
    """The sentence for "the last blocks train", worked out from the block list by hand."""
    first = names.index(trainable[0])
    path = " -> ".join(reversed(names[first:]))
    return f"gradients flow through {path} and stop at {names[first - 1]}"


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_one_step_on_every_architecture(name):
    model, batch = build(name)
    sim = FreezeSim(model, batch=batch)
    names = sim.block_names
    assert len(names) >= 2, names
    trainable = names[-2:] if len(names) >= 3 else names[-1:]
    for block in names:
        sim.set_frozen(block, block not in trainable)
    before = {n: p.detach().clone() for n, p in sim.model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in sim.model.named_buffers()}
    report = sim.step()

    for block in names:
        params = sim.block_parameters(block)
        row = report.blocks[block]
        if block in trainable:
            assert all(p.grad is not None for p in params.values()), block
            assert any(not torch.equal(p, before[n]) for n, p in params.items()), f"{block} did not move"
            assert row.grad_norm > 0 and row.weight_delta > 0 and not row.frozen
            assert row.trainable_params == sum(p.numel() for p in params.values())
        else:
            assert all(p.grad is None for p in params.values()), block
            assert all(torch.equal(p, before[n]) for n, p in params.items()), f"frozen {block} moved"
            assert row.grad_norm is None and row.weight_delta == 0.0 and row.frozen
    frozen_buffers = [n for n in buffers if any(n.startswith(m + ".") for b in names if b not in trainable
                                                 for m in sim.blocks[b])]
    assert all(torch.equal(sim.model.get_buffer(n), buffers[n]) for n in frozen_buffers), \
        "frozen BatchNorm statistics changed"
    assert report.flow_sentence() == expected_flow(names, trainable)
    assert report.forward_flops > 0
    assert 0 < report.backward_flops < report.baseline.backward_flops
    assert 0 < report.saved_activation_bytes < report.baseline.saved_activation_bytes
    assert report.trainable_params == sum(p.numel() for p in sim.model.parameters() if p.requires_grad) > 0


def test_vit_class_token_is_a_parameter_block_used_after_conv_proj():
    """ViT holds ``class_token`` as a bare parameter; it joins the tokens after ``conv_proj``."""
    model, batch = build("vit_b_16")
    sim = FreezeSim(model, batch=batch)
    assert sim.block_names == ["conv_proj", "class_token", "encoder", "heads"], "forward order"
    assert sim.block_parameters("class_token").keys() == {"class_token"}
    for block in ("conv_proj", "encoder"):
        sim.set_frozen(block, True)
    report = sim.step()
    assert report.flow_sentence() == "gradients flow through heads -> encoder -> class_token and stop at conv_proj"
    assert report.blocks["encoder"].pass_through and report.blocks["encoder"].grad_norm is None
    assert sim.model.class_token.grad is not None and float(sim.model.class_token.grad.abs().sum()) > 0
    assert sim.model.conv_proj.weight.grad is None
    assert not report.blocks["conv_proj"].pass_through, "nothing before conv_proj needs a gradient"


def test_auxiliary_heads_are_left_out(pretrained_mobilenet_v2):
    """Inception's auxiliary classifier never reaches the simulator's loss: it is removed."""
    model, batch = build("inception_v3")
    sim = FreezeSim(model, batch=batch)
    assert "AuxLogits" not in sim.block_names and sim.model.AuxLogits is None
    assert model.AuxLogits is not None, "the model passed in is not changed"
    assert sim.total_params() == sum(p.numel() for n, p in model.named_parameters()
                                     if not n.startswith("AuxLogits."))
