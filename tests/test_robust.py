"""tlhelpers.robust on the real pretrained MobileNetV2 and real digits: WiSE interpolation,
BatchNorm re-estimation, scoring on many sets."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision.transforms.v2 as T
from torch import nn

from tlhelpers import data, models, robust
from tlhelpers.evaluation import predict


@pytest.fixture(scope="module")
def digits():
    """Forty real digits, preprocessed for MobileNetV2 at 32 px, and their labels."""
    preprocess = T.Compose([T.Resize(32, antialias=True), T.ToImage(), T.ToDtype(torch.float32, scale=True),
                            T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])
    dataset = data.load_dataset("digits", "val", per_class=4, seed=0, transform=preprocess)
    return torch.stack([dataset[i][0] for i in range(len(dataset))]), torch.tensor(dataset.targets)


@pytest.fixture
def two_models(mobilenet_v2):
    models.replace_head(mobilenet_v2, 10)
    other = copy.deepcopy(mobilenet_v2)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for b in other.buffers():
            if b.is_floating_point():
                b.mul_(1.5)
    return mobilenet_v2, other


def test_interpolation_ends_reproduce_the_two_models_exactly(two_models):
    a, b = two_models
    for alpha, end in ((0.0, a), (1.0, b), (0, a), (1, b)):
        mixed = robust.interpolate(a, b, alpha)
        assert all(torch.equal(t, end.state_dict()[k]) for k, t in mixed.state_dict().items())


def test_interpolation_midpoint_includes_batchnorm_buffers(two_models):
    a, b = two_models
    before_a = {k: t.clone() for k, t in a.state_dict().items()}
    mixed = robust.interpolate(a, b, 0.5)
    key = "features.1.conv.0.1.running_var"
    torch.testing.assert_close(mixed.state_dict()[key], (a.state_dict()[key] + b.state_dict()[key]) / 2)
    torch.testing.assert_close(mixed.classifier[1].weight, (a.classifier[1].weight + b.classifier[1].weight) / 2)
    assert all(torch.equal(t, before_a[k]) for k, t in a.state_dict().items()), "inputs must not change"
    assert mixed is not a and mixed is not b


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "0.5", True])
def test_interpolation_refuses_alpha_outside_0_1(two_models, alpha):
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
        robust.interpolate(*two_models, alpha)


def test_interpolation_refuses_other_architectures(two_models, resnet18):
    a, b = two_models
    models.replace_head(b, 5)
    with pytest.raises(ValueError, match="same number of classes"):
        robust.interpolate(a, b, 0.5)
    with pytest.raises(ValueError, match="same architecture"):
        robust.interpolate(a, resnet18, 0.5)


def test_reestimation_changes_only_batchnorm_buffers(mobilenet_v2, digits):
    images, _ = digits
    mobilenet_v2.train()
    mobilenet_v2.features[3].eval()                       # a mixed state, to be restored
    parameters = {k: p.detach().clone() for k, p in mobilenet_v2.named_parameters()}
    buffers = {k: b.clone() for k, b in mobilenet_v2.named_buffers()}
    modes = {k: m.training for k, m in mobilenet_v2.named_modules()}
    momenta = {k: m.momentum for k, m in mobilenet_v2.named_modules() if isinstance(m, nn.BatchNorm2d)}
    updated = robust.reestimate_batchnorm(mobilenet_v2, images)
    assert len(updated) == 52
    assert all(torch.equal(p, parameters[k]) for k, p in mobilenet_v2.named_parameters())
    changed = [k for k, b in mobilenet_v2.named_buffers() if not torch.equal(b, buffers[k])]
    assert changed and all(k.rsplit(".", 1)[0] in updated for k in changed)
    assert {k: m.training for k, m in mobilenet_v2.named_modules()} == modes
    assert {k: m.momentum for k, m in mobilenet_v2.named_modules() if isinstance(m, nn.BatchNorm2d)} == momenta


def test_reestimated_statistics_are_those_of_the_inputs(mobilenet_v2, digits):
    """With one batch, the first BatchNorm's running mean is exactly the batch mean of its input."""
    images, _ = digits
    captured = {}
    handle = mobilenet_v2.features[0][0].register_forward_hook(lambda m, a, out: captured.setdefault("x", out))
    robust.reestimate_batchnorm(mobilenet_v2, images)
    handle.remove()
    bn = mobilenet_v2.features[0][1]
    torch.testing.assert_close(bn.running_mean, captured["x"].mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn.running_var, captured["x"].var(dim=(0, 2, 3), unbiased=True))
    chunked = copy.deepcopy(mobilenet_v2)
    robust.reestimate_batchnorm(chunked, images, batch_size=20)
    torch.testing.assert_close(chunked.features[0][1].running_mean, bn.running_mean)


@pytest.mark.parametrize("inputs, kwargs, message", [
    (torch.randn(1, 3, 32, 32), {}, "at least 2"),
    (torch.randn(3, 32, 32), {}, r"could not run on inputs of shape \(3, 32, 32\)"),
    (torch.full((4, 3, 32, 32), float("inf")), {}, "NaN or infinite"),
    (torch.randn(4, 3, 32, 32), {"batch_size": 1}, "batch_size must be"),
])
def test_reestimation_refuses_bad_inputs_and_changes_nothing(mobilenet_v2, inputs, kwargs, message):
    buffers = {k: b.clone() for k, b in mobilenet_v2.named_buffers()}
    with pytest.raises(ValueError, match=message):
        robust.reestimate_batchnorm(mobilenet_v2, inputs, **kwargs)
    assert all(torch.equal(b, buffers[k]) for k, b in mobilenet_v2.named_buffers())


def test_reestimation_needs_batchnorm():
    with pytest.raises(ValueError, match="no BatchNorm"):
        robust.reestimate_batchnorm(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), torch.randn(4, 3))


def test_accuracies_match_plain_evaluation(mobilenet_v2, digits):
    images, labels = digits
    models.replace_head(mobilenet_v2, 10)
    torch.manual_seed(0)
    sets = {"clean": images, "dimmer": images * 0.5}
    fast = robust.accuracies(mobilenet_v2, sets, labels, batch_size=16, fast=True)
    slow = robust.accuracies(mobilenet_v2, sets, labels, fast=False)
    assert robust.accuracies(mobilenet_v2, sets, labels) == slow   # 80 inputs: below FAST_FROM, no fusing
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=16)
    assert fast == slow
    assert slow["clean"] == pytest.approx(predict(mobilenet_v2, loader).accuracy)
    assert not mobilenet_v2.training and mobilenet_v2.features[0][0].weight.is_contiguous()


def test_accuracies_refuse_mismatched_sets(mobilenet_v2, digits):
    images, labels = digits
    with pytest.raises(ValueError, match="sets is empty"):
        robust.accuracies(mobilenet_v2, {}, labels)
    with pytest.raises(ValueError, match="has 39 inputs but there are 40 labels"):
        robust.accuracies(mobilenet_v2, {"clean": images, "cut": images[:39]}, labels)
