"""tlhelpers.similarity: CKA's invariances, per-block similarity and weight change on the real MobileNetV2."""

from __future__ import annotations

import copy

import pytest
import torch

from tlhelpers import models, similarity


@pytest.fixture
def features() -> torch.Tensor:
    return torch.randn(60, 20, generator=torch.Generator().manual_seed(0))


def test_cka_with_itself_is_one_and_invariant_to_rotation_and_scale(features):
    assert similarity.linear_cka(features, features) == pytest.approx(1.0, abs=1e-12)
    rotation, _ = torch.linalg.qr(torch.randn(20, 20, generator=torch.Generator().manual_seed(1)))
    assert similarity.linear_cka(features, 3.5 * features @ rotation) == pytest.approx(1.0, abs=1e-9)
    assert similarity.linear_cka(features, features + 7.0) == pytest.approx(1.0, abs=1e-9)


def test_cka_is_symmetric_bounded_and_low_for_unrelated_features(features):
    other = torch.randn(60, 5, generator=torch.Generator().manual_seed(2))
    value = similarity.linear_cka(features, other)
    assert 0.0 <= value < 0.5
    assert value == pytest.approx(similarity.linear_cka(other, features), abs=1e-12)
    squashed = features.clone()
    squashed[:, 1:] *= 0.01  # keep one direction: still related, but less
    assert 0.0 < similarity.linear_cka(features, squashed) < 1.0


def test_cka_flattens_block_outputs(features):
    maps = features.reshape(60, 5, 2, 2)
    assert similarity.linear_cka(maps, features) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("x, y, message", [
    (torch.randn(5, 3), torch.randn(6, 3), "5 examples and y 6"),
    (torch.randn(1, 3), torch.randn(1, 3), "at least 2 examples"),
    (torch.ones(5, 3), torch.randn(5, 3), "no variance"),
    (torch.randn(5), torch.randn(5, 3), "shape"),
    (torch.full((5, 3), float("nan")), torch.randn(5, 3), "NaN"),
])
def test_bad_inputs_are_refused(x, y, message):
    with pytest.raises(ValueError, match=message):
        similarity.linear_cka(x, y)


def test_block_similarity_on_the_real_network(mobilenet_v2):
    blocks = {k: v for k, v in models.layer_groups(mobilenet_v2).items() if k != "classifier"}
    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    same = similarity.block_similarity(mobilenet_v2, copy.deepcopy(mobilenet_v2), images, blocks)
    assert list(same) == list(blocks) and all(v == pytest.approx(1.0, abs=1e-9) for v in same.values())
    changed = copy.deepcopy(mobilenet_v2)
    with torch.no_grad():
        changed.features[16].conv[1][0].weight.mul_(-1.0).add_(0.3)   # disturb one late block
    moved = similarity.block_similarity(mobilenet_v2, changed, images, blocks)
    assert moved["stage4"] == pytest.approx(1.0, abs=1e-9), "blocks before the change compute the same"
    assert moved["stage5"] < 0.999
    outputs = similarity.block_outputs(mobilenet_v2, images, blocks)
    assert outputs["stage5"].shape[0] == 12 and not mobilenet_v2.training


def test_block_outputs_refuses_unknown_modules(mobilenet_v2):
    with pytest.raises(KeyError, match="features.99"):
        similarity.block_outputs(mobilenet_v2, torch.randn(2, 3, 32, 32), {"x": ["features.99"]})
    with pytest.raises(ValueError, match="blocks is empty"):
        similarity.block_outputs(mobilenet_v2, torch.randn(2, 3, 32, 32), {})


def test_relative_change_is_zero_for_a_copy_and_measures_the_moved_block(mobilenet_v2):
    blocks = models.layer_groups(mobilenet_v2)
    after = copy.deepcopy(mobilenet_v2)
    assert all(v == 0.0 for v in similarity.relative_change(mobilenet_v2, after, blocks).values())
    with torch.no_grad():
        for p in after.features[18].parameters():
            p.mul_(1.1)
    change = similarity.relative_change(mobilenet_v2, after, blocks)
    assert change["head_conv"] == pytest.approx(0.1, rel=1e-6)
    assert change["stage5"] == 0.0
    models.replace_head(after, 10)
    with pytest.raises(ValueError, match="same parameters"):
        similarity.relative_change(mobilenet_v2, after, blocks)
    with pytest.raises(KeyError, match="no parameters"):
        similarity.relative_change(mobilenet_v2, mobilenet_v2, {"nothing": ["features.99"]})
