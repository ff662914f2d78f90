"""Where and how a run executes: seeds, random state, device, and train/eval mode.

Shared by training, evaluation, the simulator and the command line, so none of them has to
import another for these. Imports only ``checks`` from tlhelpers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from tlhelpers.checks import integer


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA), make cuDNN deterministic, return a generator.

    Pass the generator to ``DataLoader(..., generator=g)`` so shuffling is reproducible too.
    PyTorch's default ``torch.backends.cudnn.benchmark`` is already ``False``; it is set here
    anyway, because code you import may have switched it on, and benchmarking picks
    convolution algorithms by timing them, which is not reproducible. ``cudnn.deterministic``
    makes cuDNN use deterministic algorithms.
    """
    seed = integer(seed, "seed")   # a NumPy integer works too
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return torch.Generator().manual_seed(seed)


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """``preferred`` if given, else CUDA, else Apple's MPS, else the CPU."""
    if preferred is not None:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode for the block, then restore every submodule's mode."""
    modes = {name: module.training for name, module in model.named_modules()}
    model.eval()
    try:
        yield model
    finally:
        for name, module in model.named_modules():
            module.training = modes.get(name, module.training)


def rng_state() -> dict:
    """Every random state a training run consumes: Python, NumPy, torch CPU and CUDA.

    Made only of tensors, numbers, strings, lists and dicts, so a checkpoint holding it loads
    with ``torch.load(..., weights_only=True)``.
    """
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": [version, list(internal), gauss],
        "numpy": {"bit_generator": numpy_state["bit_generator"],
                  "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]),
                  "has_gauss": int(numpy_state["has_gauss"]), "gauss": float(numpy_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where CUDA is available)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": numpy_state["bit_generator"],
                         "state": {"key": numpy_state["key"].numpy().astype(np.uint32),
                                   "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
