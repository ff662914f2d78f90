"""The training loop the notebooks write by hand once, packaged with what real runs need.

:func:`fit` is the loop from notebook 04 (``train()``, ``zero_grad``, forward, loss,
``backward``, ``step``; then a validation pass under ``eval()`` + ``inference_mode``) plus:
per-epoch history, a tqdm progress bar, checkpoints written atomically after every epoch and
resumable, learning-rate schedulers, any optimizer (param groups give discriminative learning
rates), device selection (cuda, mps, cpu), mixed precision on CUDA, seeding, and the
BatchNorm policy that keeps frozen BatchNorm layers in eval mode.

:func:`cache_features` runs a frozen backbone once and returns its features, so the head can
be trained for many epochs without paying for the backbone again.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlhelpers.evaluation import predict
from tlhelpers.freezing import frozen_bn_eval
from tlhelpers.models import HeadNotFoundError, find_head, fingerprint, swap_module
from tlhelpers.runtime import evaluating, model_device, pick_device, seed_everything  # noqa: F401 (re-exported for the notebooks until they import runtime)

BN_POLICIES = ("frozen-eval", "train")


class CheckpointMismatchError(ValueError):
    """A checkpoint was saved from another architecture or class count."""


@dataclass
class History:
    """Per-epoch loss, accuracy (over examples, not batch averages), learning rate and time."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    val_acc: list[float | None] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.epoch)

    def append(self, **values: float | None) -> None:
        for key, value in values.items():
            getattr(self, key).append(value)

    def best_epoch(self, metric: str = "val_acc") -> int:
        """The epoch (1-based) with the highest ``metric`` (lowest for a loss)."""
        values = [v for v in getattr(self, metric)]
        if not values or values[0] is None:
            raise ValueError(f"No {metric} recorded; pass a val_loader to fit().")
        pick = min if metric.endswith("loss") else max
        return self.epoch[values.index(pick(values))]

    def to_dict(self) -> dict[str, list]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, list]) -> "History":
        return cls(**{k: list(v) for k, v in values.items()})

    def __str__(self) -> str:
        lines = ["epoch  train_loss  train_acc  val_loss  val_acc  seconds"]
        for i, epoch in enumerate(self.epoch):
            val_loss = f"{self.val_loss[i]:8.4f}" if self.val_loss[i] is not None else "       -"
            val_acc = f"{self.val_acc[i]:7.1%}" if self.val_acc[i] is not None else "      -"
            lines.append(f"{epoch:5d}  {self.train_loss[i]:10.4f}  {self.train_acc[i]:9.1%}  "
                         f"{val_loss}  {val_acc}  {self.seconds[i]:7.1f}")
        return "\n".join(lines)

    __repr__ = __str__


def _loss_of(outputs, labels: torch.Tensor, loss_fn: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and main logits; Inception/GoogLeNet training outputs add 0.4 x the aux losses."""
    if hasattr(outputs, "logits"):
        loss = loss_fn(outputs.logits, labels)
        for aux in ("aux_logits", "aux_logits1", "aux_logits2"):
            if getattr(outputs, aux, None) is not None:
                loss = loss + 0.4 * loss_fn(getattr(outputs, aux), labels)
        return loss, outputs.logits
    return loss_fn(outputs, labels), outputs


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None, history: History | None = None, **extra) -> Path:
    """Write a checkpoint atomically (temp file, then rename), so a crash never leaves half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "fingerprint": fingerprint(model),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "history": history.to_dict() if history is not None else None,
        **extra,
    }
    staging = path.with_name(path.name + ".partial")
    torch.save(state, staging)
    os.replace(staging, path)
    return path


def _check_fingerprint(saved: dict, model: nn.Module, path: Path) -> None:
    current = fingerprint(model)
    if saved["class"] != current["class"] or saved["num_classes"] != current["num_classes"] \
            or saved["shapes"] != current["shapes"]:
        differing = [k for k in saved["shapes"].keys() | current["shapes"].keys()
                     if saved["shapes"].get(k) != current["shapes"].get(k)]
        raise CheckpointMismatchError(
            f"{path} was saved from a {saved['class']} with {saved['num_classes']} classes; this "
            f"model is a {current['class']} with {current['num_classes']} classes"
            + (f" ({len(differing)} tensors differ, e.g. {sorted(differing)[0]})" if differing else "")
            + ". Build the same architecture and head (replace_head with the same num_classes), "
              "or use another checkpoint path. The model was not changed."
        )


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None) -> dict:
    """Restore a checkpoint into ``model`` (and optimizer/scheduler); return the saved dict.

    The architecture and class count are checked first; on a mismatch nothing is loaded and
    :class:`CheckpointMismatchError` says what differs.
    """
    path = Path(path)
    state = torch.load(path, map_location=model_device(model), weights_only=False)
    _check_fingerprint(state["fingerprint"], model, path)
    model.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    return state


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader | None,
        optimizer: torch.optim.Optimizer, epochs: int, *, loss_fn: Callable | None = None,
        scheduler=None, device: str | torch.device | None = None, amp: bool = False,
        checkpoint: str | Path | None = None, resume: bool = False, bn_policy: str = "frozen-eval",
        seed: int | None = None, progress: bool = True) -> History:
    """Train ``model`` for ``epochs`` epochs and return its :class:`History`.

    Each epoch: ``model.train()`` (then frozen BatchNorm back to eval unless
    ``bn_policy="train"``), one pass over ``train_loader`` with ``zero_grad`` / forward / loss /
    ``backward`` / ``step``, a validation pass under eval() + inference_mode, then
    ``scheduler.step()`` (``ReduceLROnPlateau`` gets the validation loss). ``checkpoint`` is
    saved after every epoch; with ``resume=True`` an existing checkpoint is loaded first (its
    architecture and class count must match) and training continues after its last epoch.
    ``amp=True`` uses float16 autocast with gradient scaling on CUDA and is ignored elsewhere.
    """
    if bn_policy not in BN_POLICIES:
        raise ValueError(f"bn_policy must be one of {BN_POLICIES}, got {bn_policy!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if seed is not None:
        seed_everything(seed)
    device = pick_device(device)
    model.to(device)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    use_amp = amp and device.type == "cuda"
    if amp and not use_amp:
        warnings.warn(f"amp=True needs CUDA; training in float32 on {device}.", stacklevel=2)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    history = History()
    start = 0
    if checkpoint is not None and resume and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        history = History.from_dict(state["history"]) if state.get("history") else History()
        start = len(history)

    epochs_bar = _progress(range(start, epochs), progress and epochs > start, desc="epochs", unit="epoch")
    for epoch in epochs_bar:
        began = time.perf_counter()
        model.train()
        if bn_policy == "frozen-eval":
            frozen_bn_eval(model)
        seen, correct, loss_sum = 0, 0, 0.0
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss, logits = _loss_of(model(inputs), labels, loss_fn)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += len(labels)
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum().item()
        if seen == 0:
            raise ValueError("train_loader produced no batches; check the dataset and batch size.")
        val = predict(model, val_loader, device, loss_fn) if val_loader is not None else None
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val.loss if val is not None else loss_sum / seen)
            else:
                scheduler.step()
        history.append(epoch=epoch + 1, train_loss=loss_sum / seen, train_acc=correct / seen,
                       val_loss=val.loss if val else None, val_acc=val.accuracy if val else None,
                       lr=lr, seconds=time.perf_counter() - began)
        if progress and hasattr(epochs_bar, "set_postfix"):
            epochs_bar.set_postfix(loss=f"{loss_sum / seen:.3f}",
                                   val_acc=f"{val.accuracy:.1%}" if val else "-")
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, optimizer, scheduler, history)
    return history


def cache_features(model: nn.Module, loader: DataLoader, device: str | torch.device | None = None,
                   progress: bool = False) -> TensorDataset:
    """Run everything but the head once, under eval() + inference_mode; return features, labels.

    The head is swapped for ``nn.Identity`` during the pass and put back afterwards, so the
    features are exactly what the head would see. Train the head on the result
    (``fit(head, DataLoader(features, ...), ...)``) for as many epochs as you like: the
    backbone's cost is paid once instead of every epoch. Only valid while the backbone is
    frozen and no augmentation is used (the same image always gives the same features). A
    model without a recognisable head is taken to be a backbone already and run whole.
    """
    try:
        head_name, _ = find_head(model)
    except HeadNotFoundError:  # already a bare backbone (e.g. its head is nn.Identity): run it all
        head_name = None
    device = pick_device(device) if device is not None else model_device(model)
    head = swap_module(model, head_name, nn.Identity()) if head_name is not None else None
    features, targets = [], []
    try:
        with evaluating(model), torch.inference_mode():
            for inputs, labels in _progress(loader, progress, desc="features", leave=False):
                features.append(model(inputs.to(device)).flatten(1).cpu())
                targets.append(labels.cpu())
    finally:
        if head is not None:
            swap_module(model, head_name, head)
    return TensorDataset(torch.cat(features), torch.cat(targets))
