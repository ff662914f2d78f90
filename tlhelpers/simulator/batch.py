"""The simulator's default input: a small, seeded batch of real images at a CPU-friendly size.

Eight Fashion-MNIST training images at 64x64 pixels, normalised with the ImageNet statistics
that every torchvision ImageNet model expects. One step of MobileNetV2 on such a batch, on two
CPU cores: every block trainable 141 ms when idle (``benchmarks/results.md``), 190 ms with a
load average near 3, 0.4-1.1 s near 5; the head alone 37 ms near 3.
``benchmarks/run.py --only simulator`` measures it again.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torchvision import transforms as T

from tlhelpers import data
from tlhelpers.checks import integer


class Batch(NamedTuple):
    """Images (N, 3, H, W), integer labels (N,), the class names and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str


def batch_transform(image_size: int = 64) -> T.Compose:
    """Resize, centre-crop, to tensor, ImageNet normalisation (what torchvision weights expect)."""
    return T.Compose([T.Resize(image_size, antialias=True), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])


def default_batch(size: int = 8, image_size: int = 64, seed: int = 0,
                  dataset: str = "fashion-mnist") -> Batch:
    """``size`` training images of ``dataset`` chosen with ``seed``, at ``image_size`` pixels.

    The images come from a stratified few-shot subset (every class equally likely), then a
    seeded shuffle picks ``size`` of them. When Fashion-MNIST cannot be had (offline, no
    Debian package), scikit-learn's digits, which ship with scikit-learn, are used instead with
    a warning that says so.
    """
    size = integer(size, "size", 1)
    transform = batch_transform(image_size)
    per_class = math.ceil(size / 10)  # both built-in datasets have 10 classes
    try:
        subset = data.load_dataset(dataset, "train", per_class=per_class, seed=seed, transform=transform)
    except data.DatasetUnavailableError as error:
        if dataset != "fashion-mnist":
            raise
        warnings.warn(f"Fashion-MNIST is not available ({error.args[0].splitlines()[0]}); the "
                      "simulator uses scikit-learn's digits instead.", stacklevel=2)
        dataset = "digits"
        subset = data.load_dataset(dataset, "train", per_class=per_class, seed=seed, transform=transform)
    order = torch.randperm(len(subset), generator=torch.Generator().manual_seed(seed))[:size]
    pairs = [subset[int(i)] for i in order]
    images = torch.stack([image for image, _ in pairs])
    labels = torch.tensor([label for _, label in pairs], dtype=torch.long)
    return Batch(images, labels, list(subset.classes), dataset)


def check_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept ``(images, labels)`` (or a :class:`Batch`) and say clearly what is wrong if not."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(f"batch must be a pair (images, labels) of tensors, got {type(batch).__name__}")
    images, labels = batch[0], batch[1]
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError("batch must be a pair (images, labels) of tensors, got "
                        f"({type(images).__name__}, {type(labels).__name__})")
    if labels.dtype != torch.long or labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D tensor of class indices (torch.long), got "
                         f"{labels.dtype} with shape {tuple(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels
