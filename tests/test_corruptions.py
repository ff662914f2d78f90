"""tlhelpers.corruptions: seeded, deterministic shifted copies of real images, clear errors."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2 as T

from tlhelpers import corruptions, data


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    """Twenty real digits as float pixels in [0, 1] at 32 px, (20, 3, 32, 32)."""
    to_pixels = T.Compose([T.Resize(32, antialias=True), T.ToImage(), T.ToDtype(torch.float32, scale=True)])
    dataset = data.load_dataset("digits", "val", per_class=2, seed=0, transform=to_pixels)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


@pytest.mark.parametrize("name", list(corruptions.CORRUPTIONS))
@pytest.mark.parametrize("severity", corruptions.SEVERITIES)
def test_every_corruption_changes_the_images_and_stays_in_range(pixels, name, severity):
    before = pixels.clone()
    shifted = corruptions.corrupt(pixels, name, severity, seed=3)
    assert shifted.shape == pixels.shape and shifted.dtype == pixels.dtype
    assert shifted.min() >= 0 and shifted.max() <= 1
    assert not torch.equal(shifted, pixels)
    assert torch.equal(pixels, before), "the input must not be modified"


@pytest.mark.parametrize("name", list(corruptions.CORRUPTIONS))
def test_same_seed_same_tensor_and_global_rng_untouched(pixels, name):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = corruptions.corrupt(pixels, name, 2, seed=7)
    second = corruptions.corrupt(pixels, name, 2, seed=7)
    assert torch.equal(first, second)
    assert torch.equal(torch.rand(3), expected_next), "corrupt must not consume the global random state"


@pytest.mark.parametrize("name", ["noise", "rotation"])
def test_random_corruptions_depend_on_the_seed(pixels, name):
    assert not torch.equal(corruptions.corrupt(pixels, name, 2, seed=0), corruptions.corrupt(pixels, name, 2, seed=1))


def test_severity_orders_the_damage(pixels):
    """Higher severity moves the images further from the originals, for every corruption."""
    for name in corruptions.CORRUPTIONS:
        distance = [(corruptions.corrupt(pixels, name, s, seed=0) - pixels).abs().mean().item()
                    for s in corruptions.SEVERITIES]
        assert distance[0] < distance[1] < distance[2], (name, distance)


def test_corrupt_all_keys_and_determinism(pixels):
    sets = corruptions.corrupt_all(pixels, names=["blur", "noise"], severities=(1, 3), seed=5)
    assert list(sets) == ["blur-1", "blur-3", "noise-1", "noise-3"]
    again = corruptions.corrupt_all(pixels, names=["blur", "noise"], severities=(1, 3), seed=5)
    assert all(torch.equal(sets[k], again[k]) for k in sets)
    every = corruptions.corrupt_all(pixels, seed=0)
    assert len(every) == 2 * len(corruptions.CORRUPTIONS)


def test_describe_lists_every_corruption_and_level():
    text = corruptions.describe((1, 3))
    for corruption in corruptions.CORRUPTIONS.values():
        assert corruption.name in text and f"{corruption.levels[2]:g}" in text


def test_one_channel_images_work(pixels):
    gray = pixels[:, :1]
    assert corruptions.corrupt(gray, "contrast", 1).shape == gray.shape


@pytest.mark.parametrize("bad, message", [
    (lambda p: (p - 0.5) / 0.25, "look normalized"),
    (lambda p: p[0], "shape"),
    (lambda p: (p * 255).to(torch.uint8), "floats in"),
    (lambda p: p.numpy(), "torch.Tensor"),
    (lambda p: torch.cat([p, p[:, :1]], dim=1), "C = 1 or 3"),
])
def test_bad_pixels_are_refused_with_a_clear_error(pixels, bad, message):
    with pytest.raises(ValueError, match=message):
        corruptions.corrupt(bad(pixels), "blur", 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "fog", "severity": 1}, "Unknown corruption 'fog'; choose one of noise, blur"),
    ({"name": "blur", "severity": 4}, r"severity must be one of \(1, 2, 3\)"),
    ({"name": "blur", "severity": True}, "severity must be"),
    ({"name": "blur", "severity": 1, "seed": 1.5}, "seed must be an integer"),
])
def test_bad_arguments_are_refused(pixels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        corruptions.corrupt(pixels, **kwargs)


def test_corrupt_all_checks_everything_first(pixels):
    with pytest.raises(ValueError, match="Unknown corruption 'fog'"):
        corruptions.corrupt_all(pixels, names=["blur", "fog"])
    with pytest.raises(ValueError, match="names is empty"):
        corruptions.corrupt_all(pixels, names=[])
    with pytest.raises(ValueError, match="severities is empty"):
        corruptions.corrupt_all(pixels, severities=[])
