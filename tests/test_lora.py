"""tlhelpers.lora on the real pretrained MobileNetV2: exact no-op at start, exact merge, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlhelpers import freezing, lora, models


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_targets_are_the_pointwise_convolutions(mobilenet_v2):
    targets = lora.lora_targets(mobilenet_v2)
    modules = dict(mobilenet_v2.named_modules())
    assert len(targets) == 34
    assert all(modules[n].kernel_size == (1, 1) and modules[n].groups == 1 for n in targets)
    depthwise = [n for n, m in modules.items() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and not set(depthwise) & set(targets)


def test_starts_as_an_exact_no_op_and_trains_only_the_factors(mobilenet_v2, images):
    models.replace_head(mobilenet_v2, 10)
    mobilenet_v2.eval()
    with torch.no_grad():
        before = mobilenet_v2(images)
    freezing.freeze_backbone(mobilenet_v2)
    wrapped = lora.add_lora(mobilenet_v2, rank=4)
    with torch.no_grad():
        after = mobilenet_v2(images)
    assert torch.equal(before, after), "B starts at zero: the wrapped network must compute exactly the same"
    trainable = {n for n, p in mobilenet_v2.named_parameters() if p.requires_grad}
    assert trainable == {f"{w}.lora_{ab}.weight" for w in wrapped for ab in "ab"} | {"classifier.1.weight", "classifier.1.bias"}


def test_training_moves_only_lora_and_the_merge_is_exact(mobilenet_v2, images):
    models.replace_head(mobilenet_v2, 10)
    freezing.freeze_backbone(mobilenet_v2)
    lora.add_lora(mobilenet_v2, rank=2, alpha=4)
    frozen = {n: p.detach().clone() for n, p in mobilenet_v2.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in mobilenet_v2.parameters() if p.requires_grad], lr=0.5)
    mobilenet_v2.eval()
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(mobilenet_v2(images), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in mobilenet_v2.named_parameters() if n in frozen)
    first = mobilenet_v2.features[1].conv[1]
    assert first.delta_weight().abs().sum() > 0, "training must have moved the low-rank update"
    with torch.no_grad():
        trained = mobilenet_v2(images)
    merged_names = lora.merge_lora(mobilenet_v2)
    assert len(merged_names) == 34
    assert not any(isinstance(m, lora.LoRAConv2d) for m in mobilenet_v2.modules())
    with torch.no_grad():
        merged = mobilenet_v2(images)
    torch.testing.assert_close(merged, trained, rtol=1e-4, atol=1e-4)
    assert set(mobilenet_v2.state_dict()) == set(torchvision_state_keys(mobilenet_v2))
    assert not mobilenet_v2.features[1].conv[1].weight.requires_grad


def torchvision_state_keys(model):
    import torchvision

    plain = torchvision.models.mobilenet_v2(num_classes=10)
    return plain.state_dict().keys()


def test_merged_weight_is_w_plus_scaled_ba():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1, stride=2, bias=True)
    layer = lora.LoRAConv2d(conv, rank=2, alpha=3)
    nn.init.normal_(layer.lora_b.weight)
    x = torch.randn(2, 6, 9, 9)
    expected = conv.weight + 1.5 * torch.einsum("or,rikl->oikl", layer.lora_b.weight[:, :, 0, 0], layer.lora_a.weight)
    merged = layer.merged()
    torch.testing.assert_close(merged.weight, expected)
    torch.testing.assert_close(merged(x), layer(x), rtol=1e-5, atol=1e-5)
    assert "rank=2, alpha=3" in repr(layer)


@pytest.mark.parametrize("make, kwargs, error, message", [
    (lambda: nn.Conv2d(8, 8, 3, groups=8), {}, ValueError, "groups=8"),
    (lambda: nn.Linear(4, 4), {}, TypeError, "wraps an nn.Conv2d"),
    (lambda: nn.Conv2d(8, 8, 1), {"rank": 0}, ValueError, "rank must be a positive integer"),
    (lambda: nn.Conv2d(8, 4, 1), {"rank": 5}, ValueError, "larger than the layer"),
    (lambda: nn.Conv2d(8, 8, 1), {"alpha": -1.0}, ValueError, "alpha must be a positive number"),
    (lambda: nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), {}, ValueError, "padding_mode"),
])
def test_bad_layers_and_settings_are_refused(make, kwargs, error, message):
    with pytest.raises(error, match=message):
        lora.LoRAConv2d(make(), **kwargs)


def test_add_lora_checks_every_target_before_wrapping(mobilenet_v2):
    targets = lora.lora_targets(mobilenet_v2)
    with pytest.raises(ValueError, match="groups=96"):
        lora.add_lora(mobilenet_v2, targets=[targets[0], "features.2.conv.1.0"])
    with pytest.raises(KeyError, match="No module named 'features.99'"):
        lora.add_lora(mobilenet_v2, targets=[targets[0], "features.99"])
    with pytest.raises(ValueError, match="rank must be"):
        lora.add_lora(mobilenet_v2, rank=-1)
    assert not any(isinstance(m, lora.LoRAConv2d) for m in mobilenet_v2.modules()), "nothing may be half-wrapped"
    lora.add_lora(mobilenet_v2)
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.add_lora(mobilenet_v2)
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.add_lora(mobilenet_v2, targets=[targets[0]])


def test_models_without_targets_and_merges_without_lora_are_refused():
    with pytest.raises(ValueError, match="no convolution to adapt"):
        lora.add_lora(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="no LoRAConv2d layers to merge"):
        lora.merge_lora(nn.Sequential(nn.Conv2d(3, 4, 1)))
