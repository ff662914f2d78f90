"""Shifted copies of a test set: seeded input corruptions in the spirit of ImageNet-C.

A model that scores well on its validation set can still fail when the inputs change a
little: a noisier sensor, a blurrier lens, worse lighting, a tilted camera. ImageNet-C
(Hendrycks & Dietterich, ICLR 2019) measures that by corrupting the test images at several
severities. This module does the same for the course's small images, with torchvision's own
transforms (``torchvision.transforms.v2.functional``), so each corruption is one readable line.

Corruptions act on **pixels**: float images in [0, 1], shape ``(N, C, H, W)``, *before*
``Normalize`` (a corruption is something that happens to the photo, not to the network's
input statistics). Everything is seeded: the same images, corruption, severity and seed give
the same tensor every time, and the global random state is left untouched.

========== ============================================================ ==================
name       what happens (torchvision function)                          severity 1 / 2 / 3
========== ============================================================ ==================
noise      add Gaussian noise, clip to [0, 1] (``gaussian_noise``)      sigma 0.04/0.08/0.16
blur       Gaussian blur (``gaussian_blur``), sigma as a share of side  2.5% / 3.5% / 5%
contrast   blend towards the mean grey (``adjust_contrast``)            factor 0.5/0.3/0.2
brightness dim the image (``adjust_brightness``)                        factor 0.6/0.4/0.25
rotation   rotate by +-angle, sign drawn per image (``rotate``)         8 / 16 / 24 degrees
========== ============================================================ ==================

The levels were chosen so that, for frozen ImageNet MobileNetV2 features at 32 px on
Fashion-MNIST, severity 1 costs a few points of accuracy and severity 3 tens of points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from tlhelpers.checks import integer


@dataclass(frozen=True)
class Corruption:
    """One kind of shift: what it does, its parameter per severity, and how to apply it."""

    name: str
    description: str
    levels: tuple[float, float, float]
    unit: str
    apply: Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


def _noise(pixels: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    # torchvision draws the noise from the global generator: seed a forked copy of it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return F.gaussian_noise(pixels, mean=0.0, sigma=sigma, clip=True)


def _blur(pixels: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    sigma = share * max(pixels.shape[-2:])
    kernel = 2 * math.ceil(3 * sigma) + 1
    return F.gaussian_blur(pixels, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def _contrast(pixels: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    return F.adjust_contrast(pixels, contrast_factor=factor)


def _brightness(pixels: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    return F.adjust_brightness(pixels, brightness_factor=factor)


def _rotation(pixels: torch.Tensor, degrees: float, generator: torch.Generator) -> torch.Tensor:
    signs = torch.randint(0, 2, (len(pixels),), generator=generator) * 2 - 1
    rotated = [F.rotate(image, float(degrees * sign), interpolation=InterpolationMode.BILINEAR)
               for image, sign in zip(pixels, signs.tolist(), strict=True)]
    return torch.stack(rotated) if rotated else pixels.clone()


#: Every built-in corruption, by name, in the order tables list them.
CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("noise", "Gaussian noise, clipped to [0, 1]", (0.04, 0.08, 0.16), "sigma", _noise),
    Corruption("blur", "Gaussian blur", (0.025, 0.035, 0.05), "sigma / image side", _blur),
    Corruption("contrast", "contrast reduced towards the mean grey", (0.5, 0.3, 0.2), "factor", _contrast),
    Corruption("brightness", "image dimmed", (0.6, 0.4, 0.25), "factor", _brightness),
    Corruption("rotation", "rotated by +-angle (sign drawn per image)", (8.0, 16.0, 24.0), "degrees",
               _rotation),
)}
SEVERITIES = (1, 2, 3)


def check_pixels(pixels: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``pixels`` is a float (N, C, H, W) batch in [0, 1], C = 1 or 3."""
    if not isinstance(pixels, torch.Tensor):
        raise ValueError(f"pixels must be a torch.Tensor of images, got {type(pixels).__name__}")
    if pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(f"pixels must have shape (N, C, H, W) with C = 1 or 3, got {tuple(pixels.shape)}; "
                         "for one image use image.unsqueeze(0)")
    if not pixels.is_floating_point():
        raise ValueError(f"pixels must be floats in [0, 1], got dtype {pixels.dtype}; convert with "
                         "torchvision.transforms.v2.ToDtype(torch.float32, scale=True)")
    if len(pixels) and (pixels.min() < 0 or pixels.max() > 1 or not torch.isfinite(pixels).all()):
        raise ValueError(
            f"pixels must lie in [0, 1] (got {pixels.min().item():.2f} to {pixels.max().item():.2f}). "
            "These look normalized: corrupt the images before Normalize(mean, std), as a camera would.")


def _check_severity(severity: int) -> int:
    return integer(severity, "severity", hint=" (1 mild, 3 strong)", allowed=SEVERITIES)


def _check_name(name: str) -> Corruption:
    if name not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name]


def corrupt(pixels: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """A corrupted copy of ``pixels`` (float (N, C, H, W) in [0, 1]); the input is not changed.

    ``name`` is one of :data:`CORRUPTIONS`, ``severity`` 1, 2 or 3. The result depends only on
    the arguments (same ``seed``, same tensor) and stays in [0, 1]; the global random state is
    not consumed.
    """
    corruption = _check_name(name)
    severity = _check_severity(severity)
    check_pixels(pixels)
    seed = integer(seed, "seed")
    generator = torch.Generator().manual_seed(seed)
    return corruption.apply(pixels, corruption.levels[severity - 1], generator).clamp(0, 1)


def shift_name(name: str, severity: int) -> str:
    """The key a shifted set is stored under: ``"blur-3"``."""
    return f"{name}-{severity}"


def corrupt_all(pixels: torch.Tensor, names: Iterable[str] | None = None,
                severities: Sequence[int] = (1, 3), seed: int = 0) -> dict[str, torch.Tensor]:
    """Every corruption at every severity: ``{"noise-1": tensor, ..., "rotation-3": tensor}``.

    Corrupt the test set once and evaluate every model on the same tensors: the comparison
    between methods is then about the methods, not about different noise draws. Each set gets
    its own seed derived from ``seed``, the corruption's position and the severity.
    """
    names = list(CORRUPTIONS) if names is None else list(names)
    if not names:
        raise ValueError(f"names is empty; pass some of {', '.join(CORRUPTIONS)} (or None for all)")
    for name in names:
        _check_name(name)
    severities = [_check_severity(s) for s in severities]
    if not severities:
        raise ValueError(f"severities is empty; pass some of {SEVERITIES}")
    check_pixels(pixels)
    order = list(CORRUPTIONS)
    return {shift_name(name, severity):
            corrupt(pixels, name, severity, seed=seed * 1000 + 10 * order.index(name) + severity)
            for name in names for severity in severities}


def describe(severities: Sequence[int] = SEVERITIES) -> str:
    """A small table of the corruptions and their parameter at each severity."""
    severities = [_check_severity(s) for s in severities]
    header = "".join(f"{'severity ' + str(s):>14}" for s in severities)
    lines = [f"{'name':<11}{'what':<42}{header}  unit"]
    for c in CORRUPTIONS.values():
        levels = "".join(f"{c.levels[s - 1]:>14g}" for s in severities)
        lines.append(f"{c.name:<11}{c.description:<42}{levels}  {c.unit}")
    return "\n".join(lines)
