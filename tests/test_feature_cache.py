"""cache_features returns exactly the head's input on every architecture, and feature_head maps it
to the model's output (SqueezeNet's 1x1-convolution head included)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlhelpers import models, training

#: name, builder keyword arguments, input size: small where the architecture allows.
ARCHITECTURES = [
    ("resnet18", {}, 64), ("mobilenet_v2", {}, 64), ("efficientnet_b0", {}, 64),
    ("convnext_tiny", {}, 64), ("vit_b_16", {"image_size": 32}, 32), ("swin_t", {}, 64),
    ("squeezenet1_0", {}, 64), ("inception_v3", {"init_weights": False, "aux_logits": True}, 80),
    ("googlenet", {"init_weights": False, "aux_logits": True}, 64), ("regnet_y_400mf", {}, 64),
    ("densenet121", {}, 64),
]


@pytest.mark.parametrize("name, kwargs, size", ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_the_head_applied_to_cached_features_is_the_model(name, kwargs, size):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=5, **kwargs).eval()
    images = torch.randn(3, 3, size, size)
    loader = DataLoader(TensorDataset(images, torch.arange(3)), batch_size=2)
    head_input = []
    _, head = models.find_head(model)
    handle = head.register_forward_pre_hook(lambda module, args: head_input.append(args[0]))
    with torch.inference_mode():
        expected = model(images)
    handle.remove()

    features = training.cache_features(model, loader)
    torch.testing.assert_close(features.tensors[0], head_input[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(features.tensors[1], torch.arange(3))
    with torch.inference_mode():
        rebuilt = models.feature_head(model)(features.tensors[0])
    torch.testing.assert_close(rebuilt, expected, rtol=1e-4, atol=1e-5)
    assert not model.training and not head._forward_pre_hooks, "mode and hooks restored"


def test_squeezenet_head_trains_on_its_cached_feature_maps():
    """Before: SqueezeNet's cache held what comes after ReLU and pooling, and its Conv2d head
    failed on 2-D features. Now the cache holds the 512-channel map and training works."""
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_0(weights=None, num_classes=3).eval()
    loader = DataLoader(TensorDataset(torch.randn(6, 3, 64, 64), torch.tensor([0, 1, 2] * 2)), batch_size=3)
    features = training.cache_features(model, loader)
    assert features.tensors[0].shape[:2] == (6, 512) and features.tensors[0].dim() == 4
    head = models.feature_head(model)
    history = training.fit(head, DataLoader(features, batch_size=3), None,
                           torch.optim.SGD(head.parameters(), lr=0.01), 2, progress=False)
    assert len(history) == 2 and models.find_head(model)[1] is head[0]


@pytest.mark.parametrize("last", [nn.LogSoftmax(dim=1), nn.Softmax(dim=1)], ids=["LogSoftmax", "Softmax"])
def test_a_sequential_ending_in_linear_then_softmax_has_a_head(last):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4), last)
    assert models.find_head(model) == ("3", model[3])
    new = models.replace_head(model, 2)
    assert model[3] is new and model(torch.randn(5, 3, 2, 2)).shape == (5, 2)
    features = training.cache_features(model, [(torch.randn(5, 3, 2, 2), torch.zeros(5))])
    assert features.tensors[0].shape == (5, 8)
    assert isinstance(models.feature_head(model), nn.Sequential)


def test_a_sequential_whose_last_parameter_layer_is_not_linear_has_no_head():
    model = nn.Sequential(nn.Linear(4, 4), nn.Conv1d(1, 1, 1), nn.Softmax(dim=1))
    with pytest.raises(models.HeadNotFoundError):
        models.find_head(model)


def test_the_top_from_split_at_has_a_head_so_its_features_can_be_cached():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=4).eval()
    bottom, top = models.split_at(model, "stage5")
    name, head = models.find_head(top)
    assert head is model.classifier[1] and name == "3.1"
    x = torch.randn(2, 3, 64, 64)
    maps = training.cache_features(bottom, [(x, torch.zeros(2))])
    features = training.cache_features(top, DataLoader(maps, batch_size=2))
    whole = training.cache_features(model, [(x, torch.zeros(2))])
    torch.testing.assert_close(features.tensors[0], whole.tensors[0])


def test_a_conv_block_stack_is_not_a_classifier():
    """torchvision's Conv2dNormActivation is a Sequential subclass ending in a 1x1 conv: not a head."""
    features = torchvision.models.mobilenet_v2(weights=None).features
    with pytest.raises(models.HeadNotFoundError):
        models.find_head(features)
