"""The small real model and data the training and checkpoint tests share (one copy of each).

Imported by name (``from tiny import digits_tensors, small_cnn``: ``tests/`` is on pytest's
pythonpath); the ``digits`` fixture built from them lives in ``conftest.py``.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.utils.data import TensorDataset

from tlhelpers import data


def digits_tensors(split: str = "train", per_class: int | None = 20) -> TensorDataset:
    """Real data, tiny: scikit-learn digits as 3x8x8 tensors in [0, 1]."""
    dataset = data.load_dataset("digits", split, per_class=per_class, seed=0,
                                transform=torchvision.transforms.functional.pil_to_tensor)
    images = torch.stack([image for image, _ in dataset]).float() / 255.0
    return TensorDataset(images, torch.tensor(dataset.targets))


def small_cnn(classes: int = 10, dropout: float = 0.1, seed: int = 0) -> nn.Module:
    """A real (if small) CNN with BatchNorm and Dropout, so train/eval modes and the RNG matter."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(32, classes),
    )
