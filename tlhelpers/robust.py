"""Cheap ways to keep a fine-tuned model working when the test data shifts, and measuring it.

* :func:`interpolate` (WiSE-FT, Wortsman et al. CVPR 2022): a model whose weights *and*
  BatchNorm buffers lie on the straight line between two models of the same architecture,
  e.g. a linear probe and the model fine-tuned from it. ``alpha=0`` gives the first model
  exactly, ``alpha=1`` the second.
* :func:`reestimate_batchnorm` (Schneider et al. NeurIPS 2020; AdaBN, Li et al. 2016):
  recompute every BatchNorm layer's running mean and variance on unlabelled inputs from the
  shifted distribution. Only those buffers change, never a parameter. It is not free: it needs
  a batch of test-time inputs, and it changes the model (one copy per shift).
* :func:`accuracies`: one model scored on many evaluation sets (clean and shifted) in one call,
  quickly: an eval-only copy with every BatchNorm folded into the convolution before it.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from tlhelpers.checks import integer
from tlhelpers.evaluation import top1
from tlhelpers.freezing import batchnorm_layers
from tlhelpers.runtime import evaluating, model_device


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0 \
            or math.isnan(alpha):
        raise ValueError(f"alpha must be a number in [0, 1] (0: the first model, 1: the second), "
                         f"got {alpha!r}")
    return float(alpha)


def _check_same_architecture(a: nn.Module, b: nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    if type(a) is not type(b) or state_a.keys() != state_b.keys():
        only_a, only_b = sorted(state_a.keys() - state_b.keys()), sorted(state_b.keys() - state_a.keys())
        raise ValueError(
            f"interpolate needs two models of the same architecture; got {type(a).__name__} and "
            f"{type(b).__name__}" + (f", tensors only in the first: {only_a[:3]}" if only_a else "")
            + (f", only in the second: {only_b[:3]}" if only_b else "")
            + ". Merge adapters (lora.merge_lora) and give both the same head first.")
    for name, tensor in state_a.items():
        if tensor.shape != state_b[name].shape or tensor.dtype != state_b[name].dtype:
            raise ValueError(f"{name} is {tuple(tensor.shape)} {tensor.dtype} in the first model but "
                             f"{tuple(state_b[name].shape)} {state_b[name].dtype} in the second; "
                             "interpolate needs the same architecture and the same number of classes")


@torch.no_grad()
def interpolate(model_a: nn.Module, model_b: nn.Module, alpha: float) -> nn.Module:
    """A new model with every floating-point tensor of the state dict at ``(1 - alpha) * a + alpha * b``.

    Parameters and buffers (BatchNorm running mean and variance) are both interpolated, with
    ``torch.lerp``, which is exact at the ends: ``alpha=0`` reproduces ``model_a`` bit for bit,
    ``alpha=1`` reproduces ``model_b``. Integer buffers (BatchNorm's ``num_batches_tracked``)
    are copied from the nearer end. The result is a deep copy of ``model_a`` (its modes and
    ``requires_grad`` flags); neither input changes.
    """
    alpha = _check_alpha(alpha)
    _check_same_architecture(model_a, model_b)
    state_b = model_b.state_dict()
    mixed = copy.deepcopy(model_a)
    for name, tensor in mixed.state_dict().items():
        other = state_b[name].to(tensor.device)
        if tensor.is_floating_point():
            tensor.copy_(torch.lerp(tensor, other, alpha))
        elif alpha >= 0.5:
            tensor.copy_(other)
    return mixed


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int | None = None) -> list[str]:
    """Recompute every BatchNorm layer's running mean and variance on ``inputs``, in place.

    ``inputs`` are unlabelled, already preprocessed model inputs from the distribution the model
    will be used on (e.g. shifted test-time images). Statistics are reset and then averaged over
    the batches (``momentum=None``, PyTorch's cumulative average), with every other layer in
    eval mode, so Dropout stays off and no parameter changes. With ``batch_size=None`` all inputs
    go through in one batch and the statistics are exact; with smaller batches the variance is
    the mean of per-batch variances (close, for batches of a few dozen or more). The model's
    train/eval modes and BatchNorm momentum are restored. Returns the names of the layers updated.

    Unlike :func:`torch.optim.swa_utils.update_bn` (the same idea for SWA), this takes a tensor,
    runs under ``no_grad``, and leaves Dropout and other layers in eval mode.
    """
    layers = list(batchnorm_layers(model))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layers with running statistics; "
                         "there is nothing to re-estimate")
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2 or len(inputs) < 2:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a batch of at least 2 model inputs (N, ...), got {shape}; "
                         "BatchNorm statistics need several examples")
    if batch_size is not None:
        batch_size = integer(batch_size, "batch_size", 2, " (or None: one batch)")
    if not torch.isfinite(inputs).all():
        raise ValueError("inputs contain NaN or infinite values; BatchNorm statistics would be ruined")
    modules = dict(model.named_modules())
    momenta = {name: modules[name].momentum for name in layers}
    saved = {name: {k: v.clone() for k, v in modules[name].named_buffers()} for name in layers}
    device = model_device(model)
    with evaluating(model):
        for name in layers:
            modules[name].reset_running_stats()
            modules[name].momentum = None
            modules[name].train()
        try:
            for chunk in inputs.split(batch_size or len(inputs)):
                if len(chunk) < 2:  # a last batch of one: BatchNorm cannot take its variance
                    continue
                model(chunk.to(device))
        except Exception as error:  # put the old statistics back: nothing half-done
            for name in layers:
                for key, value in saved[name].items():
                    getattr(modules[name], key).copy_(value)
            raise ValueError(f"{type(model).__name__} could not run on inputs of shape {tuple(inputs.shape)} "
                             f"({type(error).__name__}: {error}); pass a batch of preprocessed model inputs "
                             "(N, C, H, W). The statistics were left as they were.") from error
        finally:
            for name in layers:
                modules[name].momentum = momenta[name]
    return layers


#: ``accuracies(..., fast=None)`` folds BatchNorm into the convolutions from this many inputs on.
FAST_FROM = 1000


def _fused_copy(model: nn.Module) -> nn.Module:
    """An eval-only copy with BatchNorm folded into the preceding convolution (same outputs up
    to float rounding); the model itself if it cannot be traced."""
    from torch.fx.experimental.optimization import fuse

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with evaluating(model):
                fused = fuse(model, inplace=False)
        return fused.eval()
    except (torch.fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError) as error:
        # control flow torch.fx cannot trace: evaluate the model as it is, and say so
        warnings.warn(f"accuracies(fast=True): {type(model).__name__} cannot be traced by torch.fx "
                      f"({type(error).__name__}: {error}); scoring it unfused, at the ordinary speed",
                      RuntimeWarning, stacklevel=3)
        return model


@torch.no_grad()
def accuracies(model: nn.Module, sets: Mapping[str, torch.Tensor], labels: torch.Tensor,
               batch_size: int = 250, fast: bool | None = None) -> dict[str, float]:
    """Top-1 accuracy of ``model`` on each evaluation set: ``{"clean": 0.71, "blur-3": 0.52, ...}``.

    ``sets`` maps names to preprocessed inputs that all share ``labels`` (a test set and its
    shifted copies). Runs in eval mode under ``no_grad``, restoring the model's modes. With
    ``fast=True`` it scores an eval-only copy in which each BatchNorm is folded into the
    convolution before it (``torch.fx.experimental.optimization.fuse``) and images are in
    ``channels_last`` layout: the same predictions (up to float rounding), about twice as fast
    on a CPU. Making that copy costs about as much as scoring a few hundred small images, so
    ``fast=None`` (the default) uses it only from :data:`FAST_FROM` inputs on.
    """
    if not sets:
        raise ValueError("sets is empty: pass {'clean': inputs, ...}")
    labels = torch.as_tensor(labels)
    for name, inputs in sets.items():
        if not isinstance(inputs, torch.Tensor) or len(inputs) != len(labels):
            got = len(inputs) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"set {name!r} has {got} inputs but there are {len(labels)} labels; every "
                             "set must be a copy of the same test set, in the same order")
    if fast is None:
        fast = sum(len(inputs) for inputs in sets.values()) >= FAST_FROM
    device = model_device(model)
    fused = _fused_copy(model) if fast else None
    separate = fused is not None and fused is not model
    scorer = fused.to(memory_format=torch.channels_last) if separate else model
    layout = torch.channels_last if scorer is not model else torch.contiguous_format
    with evaluating(model):
        scorer.eval()
        results = {}
        for name, inputs in sets.items():
            chunks = [chunk.to(device) for chunk in inputs.split(batch_size)]
            chunks = [c.contiguous(memory_format=layout) if c.ndim == 4 else c for c in chunks]
            predicted = torch.cat([scorer(chunk).argmax(dim=1).cpu() for chunk in chunks])
            results[name] = top1(predicted, labels)
    return results
