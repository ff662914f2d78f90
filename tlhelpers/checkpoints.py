"""Checkpoints: write them atomically, read them without trusting them, resume exactly.

A checkpoint holds the weights and a fingerprint of the architecture and, when given, the
optimizer, scheduler, gradient scaler, history, the random state of Python, NumPy and torch
(and of every process under ``torchrun``) and the data loader's shuffling, so
:func:`tlhelpers.training.fit` resumes a run exactly. Everything in it is tensors, numbers,
strings, lists and dicts, so it loads with ``torch.load(..., weights_only=True)``; loading is
all or nothing (every mismatch is checked before anything changes).
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from tlhelpers.files import atomic_write
from tlhelpers.models import fingerprint, unwrap
from tlhelpers.runtime import model_device, rng_state, set_rng_state

#: What a checkpoint written by :func:`save_checkpoint` says it is.
CHECKPOINT_FORMAT = "tlhelpers.training checkpoint"   # the name files already carry
CHECKPOINT_VERSION = 1
_RESERVED = ("format", "version", "fingerprint", "model", "optimizer", "optimizer_shapes",
             "optimizer_class", "scheduler", "scheduler_class", "scaler", "rng", "data_rng",
             "history", "best_model", "rng_per_process")

class CheckpointError(ValueError):
    """A file is not a readable checkpoint written by :func:`save_checkpoint`."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the model, optimizer or scheduler it is loaded into."""


# --------------------------------------------------------------------------- checkpoints

def _generators(loader: DataLoader | None) -> list[torch.Generator]:
    """The random generators that decide a loader's order (its own and its sampler's)."""
    if loader is None:
        return []
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def _check_storable(value, where: str) -> None:
    """Refuse values that ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(value, str) and type(value) is not str:   # e.g. torch.__version__, a TorchVersion
        raise TypeError(f"{where} is a {type(value).__name__}, a str subclass that weights_only=True cannot "
                        "read back; store str(value)")
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor, torch.Size)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_storable(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; use str or int keys")
            _check_storable(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; a checkpoint holds only tensors, numbers, "
                    "strings, lists and dicts (so it loads with weights_only=True). Convert it "
                    "(e.g. a list of class names, a dict of numbers) or leave it out.")


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None, history=None, *, scaler=None,
                    data_loader: DataLoader | None = None, best_model: dict | None = None,
                    rng_per_process: list[dict] | None = None, **extra) -> Path:
    """Write a checkpoint atomically: a complete new file replaces the old one, or nothing does.

    It holds the model's weights and a fingerprint of its architecture, and, when given, the
    optimizer (with the shapes of its parameters, to refuse a mismatched one on load), the
    scheduler, the AMP gradient scaler, the history, the random state of Python, NumPy and torch
    (CPU and CUDA) and of ``data_loader``'s shuffling, so :func:`fit` can resume exactly.
    ``extra`` values (e.g. ``classes=[...]``) are stored too. Everything is tensors, numbers,
    strings, lists and dicts, so it loads with ``torch.load(..., weights_only=True)``; other
    values are refused before anything is written. A failed write leaves no temporary file.
    Under ``torchrun``, ``rng_per_process`` holds every process's random state (rank order),
    so each process resumes its own dropout draws.
    """
    path = Path(path)
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"{', '.join(clash)} are names the checkpoint itself uses; pick other names")
    model = unwrap(model)
    state = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "fingerprint": fingerprint(model),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "optimizer_class": type(optimizer).__name__ if optimizer is not None else None,
        "optimizer_shapes": ([[list(p.shape) for p in group["params"]] for group in optimizer.param_groups]
                             if optimizer is not None else None),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scheduler_class": type(scheduler).__name__ if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_state(),
        "data_rng": [g.get_state() for g in _generators(data_loader)],
        "history": history.to_dict() if history is not None else None,
        "best_model": best_model,
        "rng_per_process": rng_per_process,
        **extra,
    }
    for key, value in state.items():
        _check_storable(value, f"checkpoint[{key!r}]")
    with atomic_write(path) as staging:
        torch.save(state, staging)
    return path


def read_checkpoint(path: str | Path, map_location=None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` without applying it to anything.

    Loads with ``weights_only=True``: only tensors, numbers, strings, lists and dicts, never
    code. A missing file, a truncated or foreign file, a plain ``state_dict`` or an arbitrary
    pickle raises :class:`CheckpointError` (``FileNotFoundError`` for a missing one) naming the
    file and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}")
    expected = ("a checkpoint written by tlhelpers.training.save_checkpoint (or fit(checkpoint=...))")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError,
            ImportError, IndexError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"{path} is not readable as {expected}: {type(error).__name__}: {first[:300]}. It may be "
            "truncated (an interrupted copy), not written by torch.save, or a pickle of arbitrary "
            "objects, which weights_only=True refuses because unpickling can run code."
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
            what = (f"a plain state_dict ({len(state)} tensors by name); load it with "
                    "model.load_state_dict(torch.load(path, weights_only=True))")
        else:
            what = f"a {type(state).__name__}" + (f" with keys {sorted(map(str, state))[:6]}"
                                                  if isinstance(state, dict) else "")
        raise CheckpointError(f"{path} holds {what}, not {expected}.")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is a checkpoint of format version {state.get('version')}; this "
                              f"tlhelpers reads version {CHECKPOINT_VERSION}.")
    return state


def fingerprint_problems(saved: dict, model: nn.Module) -> list[str]:
    """How ``model`` differs from the architecture a checkpoint recorded (``[]`` when it fits)."""
    current = fingerprint(model)
    problems = []
    if saved["class"] != current["class"] or saved["num_classes"] != current["num_classes"]:
        problems.append(f"it was saved from a {saved['class']} with {saved['num_classes']} classes; this "
                        f"model is a {current['class']} with {current['num_classes']} classes")
    differing = sorted(k for k in saved["shapes"].keys() | current["shapes"].keys()
                       if tuple(saved["shapes"].get(k, ())) != tuple(current["shapes"].get(k, ()))
                       or (k in saved["shapes"]) != (k in current["shapes"]))
    if differing:
        problems.append(f"{len(differing)} weight tensors differ in name or shape, e.g. {differing[0]}")
    return problems


def _optimizer_problems(state: dict, optimizer: torch.optim.Optimizer) -> list[str]:
    if state["optimizer"] is None:
        return ["it holds no optimizer state (it was saved without one); pass optimizer=None"]
    problems = []
    if state["optimizer_class"] != type(optimizer).__name__:
        problems.append(f"its optimizer is a {state['optimizer_class']}, yours a {type(optimizer).__name__}")
    saved = state["optimizer_shapes"]
    mine = [[list(p.shape) for p in group["params"]] for group in optimizer.param_groups]
    if len(saved) != len(mine):
        problems.append(f"its optimizer has {len(saved)} param groups, yours {len(mine)}")
    else:
        for index, (a, b) in enumerate(zip(saved, mine, strict=False)):
            if a != b:
                problems.append(f"param group {index} holds {len(a)} tensors there and {len(b)} here"
                                + ("" if len(a) != len(b) else " of other shapes"))
    return problems


def _scheduler_problems(state: dict, scheduler) -> list[str]:
    if state["scheduler"] is None:
        return ["it holds no scheduler state (it was saved without one); pass scheduler=None"]
    if state["scheduler_class"] != type(scheduler).__name__:
        return [f"its scheduler is a {state['scheduler_class']}, yours a {type(scheduler).__name__}"]
    return []


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None, *, scaler=None, data_loader: DataLoader | None = None,
                    restore_rng: bool = False) -> dict:
    """Restore a checkpoint into ``model`` (and optimizer, scheduler, scaler); return its dict.

    All or nothing: the file, the model's architecture and class count, the optimizer (type,
    param groups, tensor shapes) and the scheduler (type) are all checked before anything is
    changed. On any mismatch nothing changes and :class:`CheckpointMismatchError` lists every
    difference. ``restore_rng=True`` also restores the random state and ``data_loader``'s
    shuffling, which :func:`fit` does when it resumes.
    """
    path = Path(path)
    state = read_checkpoint(path, map_location=model_device(unwrap(model)))
    target = unwrap(model)
    problems = fingerprint_problems(state["fingerprint"], target)
    if optimizer is not None:
        problems += _optimizer_problems(state, optimizer)
    if scheduler is not None:
        problems += _scheduler_problems(state, scheduler)
    generators = _generators(data_loader)
    if restore_rng and data_loader is not None and len(state["data_rng"]) != len(generators):
        problems.append(f"it recorded {len(state['data_rng'])} data-order generators, this loader has "
                        f"{len(generators)} (give the DataLoader the same generator= / sampler as before)")
    if problems:
        raise CheckpointMismatchError(
            f"{path} does not fit: " + "; ".join(problems) + ". Nothing was changed. Build the same "
            "architecture and head (replace_head with the same num_classes), the same optimizer and "
            "scheduler, or use another checkpoint path.")
    backup_model = {k: v.detach().clone() for k, v in target.state_dict().items()}
    backup_optimizer = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    try:
        target.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and scaler.is_enabled() and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
    except Exception:
        target.load_state_dict(backup_model)
        if optimizer is not None:
            optimizer.load_state_dict(backup_optimizer)
        raise
    if restore_rng:
        per_process = state.get("rng_per_process")
        if dist.is_available() and dist.is_initialized() and per_process and len(per_process) == dist.get_world_size():
            set_rng_state(per_process[dist.get_rank()])
        else:
            set_rng_state(state["rng"])
        for generator, saved in zip(generators, state["data_rng"], strict=True):
            generator.set_state(saved)
    return state


