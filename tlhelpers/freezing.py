"""Freeze and unfreeze parts of a network by name, and keep frozen BatchNorm truly frozen.

Freezing a parameter means ``requires_grad = False``: autograd computes no gradient for it and
an optimizer skips it (its ``.grad`` stays ``None``). Two traps this module guards against:

* BatchNorm layers update their running statistics in ``train()`` mode even when their
  parameters are frozen. :func:`frozen_bn_eval` puts such layers back into ``eval()`` mode;
  :func:`set_bn_policy` applies one of the three policies ``fit`` offers.
* An optimizer built before freezing still holds the frozen parameters. With
  ``zero_grad(set_to_none=False)``, stale gradients plus momentum or weight decay keep moving
  them. :func:`check_optimizer` warns about it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from tlhelpers.models import AUX_HEADS, find_head, layer_groups, under

#: Every BatchNorm (1d/2d/3d, SyncBatchNorm, the lazy ones): the classes that keep running statistics.
BATCHNORM_TYPES = (nn.modules.batchnorm._BatchNorm,)
#: What BatchNorm layers do while training (see :func:`set_bn_policy`).
BN_POLICIES = ("frozen-eval", "train", "eval")


def batchnorm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's BatchNorm layers that keep running statistics, by name, in registration order."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, BATCHNORM_TYPES) and module.track_running_stats}


class OptimizerMismatchWarning(UserWarning):
    """The optimizer's parameters do not match the model's trainable parameters."""


def resolve(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    """Expand group names, module names and prefixes into parameter names.

    ``"layer4"`` (a group or module) and ``"layer4.1"`` (a module prefix) both work. All names
    are checked before anything changes; an unknown one raises ``KeyError`` listing the valid
    group names and top-level modules.
    """
    groups = layer_groups(model)
    parameter_names = [name for name, _ in model.named_parameters()]
    selected: list[str] = []
    unknown = []
    for name in names:
        prefixes = groups.get(name, [name])
        matches = [p for p in parameter_names
                   if any(under(p, prefix) for prefix in prefixes)]
        if not matches:
            unknown.append(name)
        selected.extend(m for m in matches if m not in selected)
    if unknown:
        modules = [n for n, _ in model.named_children()]
        deeper = next((n.rsplit(".", 1)[0] for n in parameter_names if n.count(".") >= 2), None)
        raise KeyError(
            f"Unknown layer or group {', '.join(map(repr, unknown))} (or it has no parameters); "
            f"nothing was changed. Groups: {', '.join(groups)}. Top-level modules: "
            f"{', '.join(modules)}." + (f" Deeper modules work as dotted names, e.g. {deeper!r}."
                                        if deeper else "")
        )
    return selected


def _set_requires_grad(model: nn.Module, names: tuple[str, ...], flag: bool) -> int:
    targets = resolve(model, names) if names else [n for n, _ in model.named_parameters()]
    parameters = dict(model.named_parameters())
    for name in targets:
        parameters[name].requires_grad_(flag)
    return sum(parameters[name].numel() for name in targets)


def freeze(model: nn.Module, *names: str) -> int:
    """Freeze the named groups/modules (all of the model when no name is given).

    Returns the number of scalar parameters now frozen by this call's selection.
    """
    return _set_requires_grad(model, names, False)


def unfreeze(model: nn.Module, *names: str) -> int:
    """Make the named groups/modules trainable (all of the model when no name is given)."""
    return _set_requires_grad(model, names, True)


def freeze_backbone(model: nn.Module) -> int:
    """Freeze everything except the classification head (and auxiliary heads, if any).

    Returns the number of trainable scalar parameters left.
    """
    head_name, head = find_head(model)  # before changing anything: no head, nothing frozen
    freeze(model)
    head.requires_grad_(True)
    for aux in AUX_HEADS:
        if isinstance(getattr(model, aux, None), nn.Module):
            getattr(model, aux).requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _percent(share: float) -> str:
    """0% and 100% exactly; small non-zero shares keep two significant digits (0.046%)."""
    if share in (0.0, 1.0):
        return f"{share:.0%}"
    return f"{share * 100:.2g}%" if share < 0.001 else f"{share:.1%}"


@dataclass
class SummaryRow:
    group: str
    parameters: int
    trainable: int

    @property
    def share(self) -> float:
        return self.trainable / self.parameters if self.parameters else 0.0


@dataclass
class TrainableSummary:
    """Per-group parameter counts; prints as a table and renders as HTML in notebooks."""

    rows: list[SummaryRow] = field(default_factory=list)

    @property
    def parameters(self) -> int:
        return sum(r.parameters for r in self.rows)

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def share(self) -> float:
        return self.trainable / self.parameters if self.parameters else 0.0

    def __getitem__(self, group: str) -> SummaryRow:
        for row in self.rows:
            if row.group == group:
                return row
        raise KeyError(f"No group {group!r}; groups: {', '.join(r.group for r in self.rows)}")

    def _table(self) -> list[tuple[str, str, str, str]]:
        lines = [(r.group, f"{r.parameters:,}", f"{r.trainable:,}", _percent(r.share)) for r in self.rows]
        lines.append(("total", f"{self.parameters:,}", f"{self.trainable:,}", _percent(self.share)))
        return lines

    def __str__(self) -> str:
        header = ("group", "parameters", "trainable", "share")
        lines = [header, *self._table()]
        widths = [max(len(line[i]) for line in lines) for i in range(4)]
        return "\n".join(
            "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
            for line in lines
        )

    __repr__ = __str__

    def _repr_html_(self) -> str:
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:{'left' if i == 0 else 'right'}'>{c}</td>"
                             for i, c in enumerate(line)) + "</tr>"
            for line in self._table()
        )
        return ("<table><thead><tr><th>group</th><th>parameters</th><th>trainable</th>"
                f"<th>share</th></tr></thead><tbody>{body}</tbody></table>")


def trainable_summary(model: nn.Module) -> TrainableSummary:
    """Per layer group: how many parameters, how many trainable, and the trainable share."""
    rows = []
    parameters = dict(model.named_parameters())
    for group, prefixes in layer_groups(model).items():
        members = [p for n, p in parameters.items()
                   if any(under(n, pre) for pre in prefixes)]
        rows.append(SummaryRow(group, sum(p.numel() for p in members),
                               sum(p.numel() for p in members if p.requires_grad)))
    return TrainableSummary(rows)


def _frozen_batchnorms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BatchNorm layers that count as frozen, in registration order.

    A BatchNorm layer with parameters is frozen when all of them are. One without parameters
    (``affine=False``) has nothing to freeze; it follows the layer that feeds it, taken as the
    nearest module with parameters registered before it (the convolution in torchvision's
    Conv-BN-activation blocks), or, when none comes before it, the whole model.
    """
    frozen = []
    feeding_frozen: bool | None = None
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, BATCHNORM_TYPES):
            if own:
                is_frozen = not any(p.requires_grad for p in own)
            elif feeding_frozen is not None:
                is_frozen = feeding_frozen
            else:
                is_frozen = not any(p.requires_grad for p in model.parameters())
            if is_frozen:
                frozen.append((name, module))
        if own:
            feeding_frozen = not any(p.requires_grad for p in own)
    return frozen


def frozen_bn_eval(model: nn.Module) -> list[str]:
    """Put every frozen BatchNorm layer into ``eval()`` mode; return the names it switched.

    Call it after ``model.train()``. In train mode BatchNorm normalises with the batch's
    statistics and updates its running mean/var, even when ``requires_grad`` is False: the
    "frozen" layer still changes. In eval mode it uses (and keeps) the pretrained statistics.
    A layer counts as frozen when all its parameters are; an ``affine=False`` layer, which has
    none, when the layer feeding it is (see :func:`_frozen_batchnorms`).
    """
    switched = []
    for name, module in _frozen_batchnorms(model):
        if module.training:
            module.eval()
            switched.append(name)
    return switched


def set_bn_policy(model: nn.Module, policy: str) -> list[str]:
    """Apply a BatchNorm policy after ``model.train()``; return the names of layers put in eval.

    * ``"frozen-eval"`` (the course's default): frozen BatchNorm layers in eval mode
      (:func:`frozen_bn_eval`), trainable ones train normally;
    * ``"eval"``: every BatchNorm layer in eval mode, trainable or not. They keep normalising
      with the pretrained statistics while their weight and bias (if trainable) still learn:
      what small-batch fine-tuning needs, where each batch's own statistics are too noisy;
    * ``"train"``: leave every BatchNorm layer in train mode (batch statistics, running
      statistics updated), as a plain ``model.train()`` does.
    """
    if policy not in BN_POLICIES:
        raise ValueError(f"bn_policy must be one of {', '.join(map(repr, BN_POLICIES))}, got {policy!r}")
    if policy == "frozen-eval":
        return frozen_bn_eval(model)
    switched = []
    if policy == "eval":
        for name, module in model.named_modules():
            if isinstance(module, BATCHNORM_TYPES) and module.training:
                module.eval()
                switched.append(name)
    return switched


def check_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module,
                    warn: bool = True) -> tuple[list[str], list[str]]:
    """Compare an optimizer's parameters with the model's trainable ones.

    Returns (frozen parameters the optimizer holds, trainable parameters it misses) and warns
    with :class:`OptimizerMismatchWarning` when either list is non-empty. Holding frozen
    parameters is harmless with ``zero_grad()``'s default ``set_to_none=True``, but with
    ``set_to_none=False`` their stale gradients plus momentum or weight decay still move them.
    """
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen_held = [n for n, p in model.named_parameters() if id(p) in held and not p.requires_grad]
    missed = [n for n, p in model.named_parameters() if id(p) not in held and p.requires_grad]
    if warn and (frozen_held or missed):
        parts = []
        if frozen_held:
            parts.append(f"holds {len(frozen_held)} frozen parameter tensors (e.g. {frozen_held[0]}); "
                         "with zero_grad(set_to_none=False) plus momentum or weight decay they still "
                         "move. Build the optimizer from [p for p in model.parameters() if p.requires_grad]")
        if missed:
            parts.append(f"misses {len(missed)} trainable parameter tensors (e.g. {missed[0]}), which "
                         "will never be updated. Rebuild the optimizer after unfreezing or replacing layers")
        warnings.warn("The optimizer " + "; it ".join(parts) + ".", OptimizerMismatchWarning, stacklevel=2)
    return frozen_held, missed
