"""The training loop the notebooks write by hand once, packaged with what real runs need.

:func:`fit` is the loop from notebook 04 (``train()``, ``zero_grad``, forward, loss,
``backward``, ``step``; then a validation pass under ``eval()`` + ``inference_mode``) plus:
per-epoch history, a tqdm progress bar, checkpoints written atomically after every epoch and
resumable exactly (weights, optimizer, scheduler, gradient scaler, random state, data order),
learning-rate schedulers stepped per epoch or per batch, any optimizer (param groups give
discriminative learning rates), device selection (cuda, mps, cpu), mixed precision on CUDA,
seeding, a BatchNorm policy, keeping the best epoch, early stopping, and what
``DistributedDataParallel`` needs (see :func:`fit`).

:func:`cache_features` runs a frozen backbone once and returns exactly what the head sees, so
the head can be trained for many epochs without paying for the backbone again.
"""

from __future__ import annotations

import copy
import pickle
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlhelpers.checks import integer
from tlhelpers.evaluation import predict
from tlhelpers.files import atomic_write
from tlhelpers.freezing import BN_POLICIES, set_bn_policy
from tlhelpers.models import AUX_OUTPUTS, HeadNotFoundError, find_head, fingerprint, unwrap
from tlhelpers.runtime import evaluating, model_device, pick_device, rng_state, seed_everything, set_rng_state

#: What a checkpoint written by :func:`save_checkpoint` says it is.
CHECKPOINT_FORMAT = "tlhelpers.training checkpoint"
CHECKPOINT_VERSION = 1
_RESERVED = ("format", "version", "fingerprint", "model", "optimizer", "optimizer_shapes",
             "optimizer_class", "scheduler", "scheduler_class", "scaler", "rng", "data_rng",
             "history", "best_model", "rng_per_process")
SCHEDULER_STEPS = ("epoch", "batch")
#: Weight of each auxiliary head's loss (Inception v3, GoogLeNet): 0.4, the common choice in
#: PyTorch fine-tuning code. (The GoogLeNet paper weighted each auxiliary loss by 0.3.)
AUX_LOSS_WEIGHT = 0.4


class CheckpointError(ValueError):
    """A file is not a readable checkpoint written by :func:`save_checkpoint`."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the model, optimizer or scheduler it is loaded into."""


@dataclass
class History:
    """Per-epoch loss, accuracy (over examples, not batch averages), learning rates and time.

    ``train_loss`` and ``val_loss`` are the same loss (the main output's), so they can be
    compared; with auxiliary heads (Inception v3, GoogLeNet) the gradient also includes
    ``AUX_LOSS_WEIGHT`` x each auxiliary loss, which is not part of the recorded number.
    ``lr`` is the learning rate of the first param group at the start of each epoch;
    ``group_lrs`` has every group's.
    """

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    val_acc: list[float | None] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    group_lrs: list[list[float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.epoch)

    def append(self, **values) -> None:
        for key, value in values.items():
            getattr(self, key).append(value)

    def best_epoch(self, metric: str = "val_acc") -> int:
        """The epoch (1-based) with the highest ``metric`` (lowest for a loss); the first on ties."""
        if metric not in ("val_acc", "val_loss", "train_acc", "train_loss"):
            raise ValueError(f"metric must be val_acc, val_loss, train_acc or train_loss, got {metric!r}")
        values = list(getattr(self, metric))
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


def _loss_of(outputs, labels: torch.Tensor, loss_fn: Callable
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss to backpropagate, main loss, main logits) for one batch.

    Inception v3 / GoogLeNet in train mode return their logits plus auxiliary logits; the
    loss to backpropagate adds ``AUX_LOSS_WEIGHT`` x each auxiliary loss, the main loss does not.
    """
    if hasattr(outputs, "logits"):
        main = loss_fn(outputs.logits, labels)
        total = main
        for aux in AUX_OUTPUTS:
            if getattr(outputs, aux, None) is not None:
                total = total + AUX_LOSS_WEIGHT * loss_fn(getattr(outputs, aux), labels)
        return total, main, outputs.logits
    main = loss_fn(outputs, labels)
    return main, main, outputs


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
                    scheduler=None, history: History | None = None, *, scaler=None,
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
        for index, (a, b) in enumerate(zip(saved, mine)):
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
        if _distributed() and per_process and len(per_process) == dist.get_world_size():
            set_rng_state(per_process[dist.get_rank()])
        else:
            set_rng_state(state["rng"])
        for generator, saved in zip(generators, state["data_rng"]):
            generator.set_state(saved)
    return state


# --------------------------------------------------------------------------- fit

def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_main_process() -> bool:
    return not _distributed() or dist.get_rank() == 0


def _sum_across_processes(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor of counts over all processes (a no-op in a single process)."""
    if _distributed():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _gather_rng() -> list[dict]:
    """Every process's random state, in rank order (collected on all ranks)."""
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, rng_state())
    return states


def _validate(model: nn.Module, loader: DataLoader, device: torch.device, loss_fn: Callable
              ) -> tuple[float, float]:
    """Validation loss and accuracy over every example every process saw (exact, not averaged
    per batch or per process)."""
    result = predict(model, loader, device, loss_fn)
    counts = torch.tensor([result.loss * len(result.targets), float((result.labels == result.targets).sum()),
                           float(len(result.targets))], dtype=torch.float64, device=device)
    loss_sum, correct, seen = _sum_across_processes(counts).tolist()
    return loss_sum / seen, correct / seen


def _check_fit_arguments(epochs, bn_policy, scheduler, scheduler_step, keep_best, patience, val_loader) -> None:
    if bn_policy not in BN_POLICIES:
        raise ValueError(f"bn_policy must be one of {', '.join(map(repr, BN_POLICIES))}, got {bn_policy!r}")
    integer(epochs, "epochs", 0)
    if scheduler_step not in SCHEDULER_STEPS:
        raise ValueError(f"scheduler_step must be 'epoch' or 'batch', got {scheduler_step!r}")
    if scheduler_step == "batch" and isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ValueError("ReduceLROnPlateau needs a metric, so it steps per epoch: use scheduler_step='epoch'")
    if keep_best is not None and keep_best not in ("val_acc", "val_loss"):
        raise ValueError(f"keep_best must be 'val_acc', 'val_loss' or None, got {keep_best!r}")
    if (keep_best is not None or patience is not None) and val_loader is None:
        raise ValueError("keep_best and patience watch the validation metric: pass a val_loader")
    if patience is not None:
        integer(patience, "patience", 1, " or None")


def _improved(history: History, metric: str) -> bool:
    """Did the last epoch set a new best ``metric`` (strictly)?"""
    values = getattr(history, metric)
    if len(values) == 1:
        return True
    best_before = (min if metric.endswith("loss") else max)(values[:-1])
    return values[-1] < best_before if metric.endswith("loss") else values[-1] > best_before


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader | None,
        optimizer: torch.optim.Optimizer, epochs: int, *, loss_fn: Callable | None = None,
        scheduler=None, scheduler_step: str = "epoch", device: str | torch.device | None = None,
        amp: bool = False, checkpoint: str | Path | None = None, resume: bool = False,
        overwrite: bool = False, bn_policy: str = "frozen-eval", keep_best: str | None = None,
        patience: int | None = None, seed: int | None = None, progress: bool = True,
        checkpoint_extra: dict | None = None) -> History:
    """Train ``model`` for ``epochs`` epochs and return its :class:`History`.

    Each epoch: ``model.train()`` and the BatchNorm policy (``bn_policy``, see
    :func:`tlhelpers.freezing.set_bn_policy`: ``"frozen-eval"`` keeps frozen BatchNorm in eval
    mode, ``"eval"`` all of it, ``"train"`` none), one pass over ``train_loader`` with
    ``zero_grad`` / forward / loss / ``backward`` / ``step``, a validation pass under eval() +
    inference_mode, then ``scheduler.step()`` (``ReduceLROnPlateau`` gets the validation loss).
    With ``scheduler_step="batch"`` the scheduler steps after every optimizer step instead
    (``OneCycleLR``). Losses and accuracies are sums over examples, synchronised once per epoch.

    ``checkpoint`` is written after every epoch. An existing one is never overwritten by
    accident: pass ``resume=True`` to continue that run (it is loaded first, all or nothing, and
    training continues after its last epoch with the same weights, optimizer, scheduler, random
    state and data order, so the result equals an uninterrupted run; with no file yet it simply
    starts), ``overwrite=True`` to replace it, or another path. ``checkpoint_extra`` values
    (plain numbers, strings, lists, dicts) are stored in every checkpoint too, e.g. the
    settings a command line must find unchanged before it resumes.

    ``keep_best="val_acc"`` (or ``"val_loss"``) puts the weights of the best epoch back into the
    model at the end (a copy is kept in memory and in the checkpoint); ``patience=k`` stops
    after ``k`` epochs without a new best. ``amp=True`` uses float16 autocast with gradient
    scaling on CUDA and is ignored, with a warning, elsewhere.

    Under ``torchrun`` (``torch.distributed`` initialised, ``model`` wrapped in
    ``DistributedDataParallel``): the sampler's ``set_epoch`` is called every epoch, losses and
    accuracies are summed over all processes, and only rank 0 shows progress and writes the
    checkpoint (then all ranks wait for it). Single-process behaviour is unchanged.
    """
    _check_fit_arguments(epochs, bn_policy, scheduler, scheduler_step, keep_best, patience, val_loader)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and checkpoint.exists() and not resume and not overwrite:
        raise FileExistsError(
            f"{checkpoint} already exists. Pass resume=True to continue that run, overwrite=True to "
            "replace it, or another checkpoint path. Nothing was trained or written.")
    if seed is not None:
        seed_everything(seed)
    device = pick_device(device)
    model.to(device)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    use_amp = amp and device.type == "cuda"
    if amp and not use_amp:
        warnings.warn(f"amp=True needs CUDA; training in float32 on {device}.", stacklevel=2)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    main = _is_main_process()

    history, start, best_state = History(), 0, None
    if checkpoint is not None and resume and checkpoint.exists():
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, scaler=scaler,
                                data_loader=train_loader, restore_rng=True)
        history = History.from_dict(state["history"]) if state.get("history") else History()
        best_state = state.get("best_model")
        start = len(history)

    stopped = False
    epochs_bar = _progress(range(start, epochs), progress and main and epochs > start,
                           desc="epochs", unit="epoch")
    for epoch in epochs_bar:
        began = time.perf_counter()
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        model.train()
        set_bn_policy(model, bn_policy)
        lrs = [group["lr"] for group in optimizer.param_groups]
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, seen
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                total_loss, main_loss, logits = _loss_of(model(inputs), labels, loss_fn)
            scaler.scale(total_loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None and scheduler_step == "batch":
                scheduler.step()
            with torch.no_grad():
                totals += torch.stack([main_loss.detach().double() * len(labels),
                                       (logits.argmax(dim=1) == labels).sum().double(),
                                       torch.tensor(float(len(labels)), dtype=torch.float64, device=device)])
        loss_sum, correct, seen = _sum_across_processes(totals).tolist()
        if seen == 0:
            raise ValueError("train_loader produced no batches; check the dataset and batch size.")
        val_loss, val_acc = (_validate(model, val_loader, device, loss_fn) if val_loader is not None
                             else (None, None))
        if scheduler is not None and scheduler_step == "epoch":
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss if val_loss is not None else loss_sum / seen)
            else:
                scheduler.step()
        history.append(epoch=epoch + 1, train_loss=loss_sum / seen, train_acc=correct / seen,
                       val_loss=val_loss, val_acc=val_acc, lr=lrs[0], group_lrs=lrs,
                       seconds=time.perf_counter() - began)
        if keep_best is not None and _improved(history, keep_best):
            best_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
        if hasattr(epochs_bar, "set_postfix"):
            epochs_bar.set_postfix(loss=f"{loss_sum / seen:.3f}",
                                   val_acc=f"{val_acc:.1%}" if val_acc is not None else "-")
        if checkpoint is not None:
            per_process = _gather_rng() if _distributed() else None  # a collective: every rank joins
            if main:
                save_checkpoint(checkpoint, model, optimizer, scheduler, history, scaler=scaler,
                                data_loader=train_loader, best_model=best_state, rng_per_process=per_process,
                                **(checkpoint_extra or {}))
            if _distributed():
                dist.barrier()
        if patience is not None and len(history) - history.best_epoch(keep_best or "val_acc") >= patience:
            stopped = True
            break
    if keep_best is not None and best_state is not None:
        unwrap(model).load_state_dict(best_state)
    if stopped and main and progress:
        print(f"early stop after epoch {history.epoch[-1]}: no new best "
              f"{keep_best or 'val_acc'} for {patience} epochs")
    return history


# --------------------------------------------------------------------------- feature cache

class _HeadReached(Exception):
    """Raised by a forward pre-hook to stop the forward pass at the head."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features


def cache_features(model: nn.Module, loader: Iterable, device: str | torch.device | None = None,
                   progress: bool = False) -> TensorDataset:
    """Run the network up to its head once, under eval() + inference_mode; return (features, labels).

    The features are exactly the head's input, for every architecture: a forward pre-hook on
    the head records what arrives there and stops the pass. (For SqueezeNet, whose head is a
    1x1 convolution, that is a feature map.) Train :func:`tlhelpers.models.feature_head` of the
    model on the result (``fit(feature_head(model), DataLoader(features, ...), ...)``) for as
    many epochs as you like: the backbone's cost is paid once instead of every epoch. Only
    valid while everything before the head is frozen and no augmentation is used (the same
    image always gives the same features). A model without a recognisable head is taken to be
    a backbone already and run whole. With an explicit ``device`` the model is moved there.
    """
    try:
        _, head = find_head(model)
    except HeadNotFoundError:  # already a bare backbone (e.g. its head is nn.Identity): run it all
        head = None
    if device is not None:
        device = pick_device(device)
        model.to(device)
    else:
        device = model_device(model)

    def stop_at_head(_module, args):
        raise _HeadReached(args[0])

    handle = head.register_forward_pre_hook(stop_at_head) if head is not None else None
    features, targets = [], []
    try:
        with evaluating(model), torch.inference_mode():
            for inputs, labels in _progress(loader, progress, desc="features", leave=False):
                try:
                    output = model(inputs.to(device))
                except _HeadReached as reached:
                    output = reached.features
                features.append(output.cpu())
                targets.append(torch.as_tensor(labels).cpu())
    finally:
        if handle is not None:
            handle.remove()
    if not features:
        raise ValueError("The loader produced no batches; check the dataset and batch size.")
    return TensorDataset(torch.cat(features), torch.cat(targets))
