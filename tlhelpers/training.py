"""The training loop the notebooks write by hand once, packaged with what real runs need.

:func:`fit` is the loop from notebook 04 (``train()``, ``zero_grad``, forward, loss,
``backward``, ``step``; then a validation pass under ``eval()`` + ``inference_mode``) plus:
per-epoch history, a tqdm progress bar, checkpoints written atomically after every epoch and
resumable exactly (weights, optimizer, scheduler, gradient scaler, random state, data order;
the format lives in :mod:`tlhelpers.checkpoints`),
learning-rate schedulers stepped per epoch or per batch, any optimizer (param groups give
discriminative learning rates), device selection (cuda, mps, cpu), mixed precision on CUDA,
seeding, a BatchNorm policy, keeping the best epoch, early stopping, and what
``DistributedDataParallel`` needs (see :func:`fit`).

:func:`cache_features` runs a frozen backbone once and returns exactly what the head sees, so
the head can be trained for many epochs without paying for the backbone again.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlhelpers.checkpoints import load_checkpoint, save_checkpoint
from tlhelpers.checks import integer
from tlhelpers.evaluation import predict
from tlhelpers.freezing import BN_POLICIES, set_bn_policy
from tlhelpers.models import AUX_OUTPUTS, HeadNotFoundError, find_head, unwrap
from tlhelpers.runtime import evaluating, model_device, pick_device, rng_state, seed_everything

SCHEDULER_STEPS = ("epoch", "batch")
#: Weight of each auxiliary head's loss (Inception v3, GoogLeNet): 0.4, the common choice in
#: PyTorch fine-tuning code. (The GoogLeNet paper weighted each auxiliary loss by 0.3.)
AUX_LOSS_WEIGHT = 0.4


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
    def from_dict(cls, values: dict[str, list]) -> History:
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


OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def build_optimizer(params: Iterable, name: str, lr: float, *, momentum: float = 0.9, weight_decay: float = 0.0,
                    trainable_only: bool = True) -> torch.optim.Optimizer:
    """The one optimizer builder: ``name`` ("sgd" with ``momentum``, "adam", or "adamw" with
    ``weight_decay``) over ``params``, parameters or param groups (a group's own ``"lr"`` wins
    over ``lr``, as in plain ``torch.optim``).

    With ``trainable_only`` (the default) each group keeps only parameters that require grad and
    empty groups are dropped, so a frozen layer is never handed to the optimizer; ``ValueError``
    when nothing is left, naming what to do. ``trainable_only=False`` keeps every parameter (the
    simulator's "optimizer built before freezing" scenario).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}, got {name!r}")
    groups = list(params)
    if not groups:
        raise ValueError("no parameters to train: pass the trainable parameters (or param groups)")
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    built = []
    for group in groups:
        group = dict(group)
        group["params"] = [p for p in group["params"] if p.requires_grad or not trainable_only]
        if group["params"]:
            built.append(group)
    if not built:
        raise ValueError("none of the parameters given requires grad: unfreeze what should train")
    if name == "sgd":
        return torch.optim.SGD(built, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(built, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(built, lr=lr, weight_decay=weight_decay)


def train_step(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
               loss_fn: Callable, scaler: torch.amp.GradScaler | None = None):
    """One training step: ``zero_grad`` / forward / loss / ``backward`` / ``step``; returns
    ``(total_loss, main_loss, logits)`` (see :func:`_loss_of` for models with auxiliary outputs).

    The one step every trainer here takes (:func:`fit`, :func:`tlhelpers.protocol.train`): with a
    ``scaler`` (float16 autocast on CUDA) the loss is scaled before ``backward`` and the step goes
    through the scaler, which skips it when a gradient overflowed.
    """
    optimizer.zero_grad(set_to_none=True)
    enabled = scaler is not None and scaler.is_enabled()
    with torch.autocast(device_type=inputs.device.type, dtype=torch.float16, enabled=enabled):
        total_loss, main_loss, logits = _loss_of(model(inputs), labels, loss_fn)
    if enabled:
        scaler.scale(total_loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        total_loss.backward()
        optimizer.step()
    return total_loss, main_loss, logits


def _train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                 device: torch.device, scaler: torch.amp.GradScaler, batch_scheduler=None) -> tuple[float, float, float]:
    """One pass over ``loader`` (a :func:`train_step` per batch, ``batch_scheduler.step()`` after each);
    returns the loss sum, correct count and examples seen, summed over every process."""
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, seen
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        _, main_loss, logits = train_step(model, inputs, labels, optimizer, loss_fn, scaler)
        if batch_scheduler is not None:
            batch_scheduler.step()
        with torch.no_grad():
            totals += torch.stack([main_loss.detach().double() * len(labels),
                                   (logits.argmax(dim=1) == labels).sum().double(),
                                   torch.tensor(float(len(labels)), dtype=torch.float64, device=device)])
    loss_sum, correct, seen = _sum_across_processes(totals).tolist()
    if seen == 0:
        raise ValueError("train_loader produced no batches; check the dataset and batch size.")
    return loss_sum, correct, seen


def _resumed(checkpoint: Path, model: nn.Module, optimizer, scheduler, scaler,
             train_loader: DataLoader) -> tuple[History, dict | None]:
    """Load ``checkpoint`` into the model, optimizer, scheduler, scaler, data order and random state
    (all or nothing); return its history and the best epoch's weights it kept."""
    state = load_checkpoint(checkpoint, model, optimizer, scheduler, scaler=scaler,
                            data_loader=train_loader, restore_rng=True)
    history = History.from_dict(state["history"]) if state.get("history") else History()
    return history, state.get("best_model")


def _save_epoch(checkpoint: Path, model: nn.Module, optimizer, scheduler, history: History, scaler,
                train_loader: DataLoader, best_state: dict | None, extra: dict | None, main: bool) -> None:
    """Write the epoch's checkpoint from rank 0 (every rank joins the random-state gather and the barrier)."""
    per_process = _gather_rng() if _distributed() else None  # a collective: every rank joins
    if main:
        save_checkpoint(checkpoint, model, optimizer, scheduler, history, scaler=scaler,
                        data_loader=train_loader, best_model=best_state, rng_per_process=per_process,
                        **(extra or {}))
    if _distributed():
        dist.barrier()


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

    history, best_state = History(), None
    if checkpoint is not None and resume and checkpoint.exists():
        history, best_state = _resumed(checkpoint, model, optimizer, scheduler, scaler, train_loader)
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
        loss_sum, correct, seen = _train_epoch(model, train_loader, optimizer, loss_fn, device, scaler,
                                               scheduler if scheduler_step == "batch" else None)
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
            _save_epoch(checkpoint, model, optimizer, scheduler, history, scaler, train_loader, best_state,
                        checkpoint_extra, main)
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
