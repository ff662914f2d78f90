"""LoRA for convolutions: train a small low-rank update instead of the full weight.

LoRA (Hu et al., ICLR 2022) freezes a layer's weight ``W`` and learns ``W + (alpha / r) * B A``
where ``A`` maps the input channels to ``r`` channels and ``B`` maps them back, with ``r`` much
smaller than either. ``B`` starts at zero, so the wrapped network computes exactly what it did
before training; after training the update can be **merged** into ``W`` and the network is a
plain one again, with no extra cost at inference.

For MobileNetV2 the targets are the 1x1 ("pointwise") convolutions: they hold almost all of
its convolution weights. Its 3x3 depthwise convolutions have one 3x3 filter per channel; a
low-rank update of those has *more* parameters than the layer itself (huggingface/peft#2202),
so :func:`add_lora` refuses grouped convolutions.

Why not ``peft``? It wraps torchvision's ``Conv2d`` cleanly (``LoraConfig(target_modules=[...])``)
and merges exactly, but it pulls in ``transformers``, ``accelerate`` and ``huggingface_hub``
(about 330 MB beside torch, seconds to import) for one cell of one notebook. The same
parametrisation as peft's (``A`` a convolution with the layer's kernel and stride, ``B`` a 1x1
convolution, Kaiming-uniform ``A``, zero ``B``, scale ``alpha / r``) is a few lines here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tlhelpers.checks import integer
from tlhelpers.models import HeadNotFoundError, find_head, swap_module


class LoRAConv2d(nn.Module):
    """A frozen ``Conv2d`` plus a trainable low-rank update ``(alpha / rank) * B(A(x))``.

    ``A`` (``lora_a``) is a convolution with the wrapped layer's kernel size, stride, padding
    and dilation from ``in_channels`` to ``rank`` channels; ``B`` (``lora_b``) a 1x1 convolution
    from ``rank`` to ``out_channels``, initialised to zero so the module starts as an exact
    no-op change. Only ``A`` and ``B`` are trainable.
    """

    def __init__(self, conv: nn.Conv2d, rank: int = 4, alpha: float | None = None):
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"LoRAConv2d wraps an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(
                f"LoRAConv2d needs a convolution with groups=1, got groups={conv.groups} (a depthwise or "
                "grouped convolution): its low-rank update would have more parameters than the layer. "
                "Target the 1x1 convolutions instead (lora.lora_targets(model)).")
        if conv.padding_mode != "zeros":
            raise ValueError(f"LoRAConv2d supports padding_mode='zeros' only, got {conv.padding_mode!r}")
        rank = integer(rank, "rank", 1, " (e.g. 4)")
        if rank > min(conv.in_channels, conv.out_channels):
            raise ValueError(f"rank {rank} is larger than the layer's {conv.in_channels} input / "
                             f"{conv.out_channels} output channels; a low-rank update needs a smaller rank")
        alpha = float(rank if alpha is None else alpha)
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a positive number (the update is scaled by alpha / rank), "
                             f"got {alpha!r}")
        self.conv = conv
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        kwargs = {"device": conv.weight.device, "dtype": conv.weight.dtype}
        self.lora_a = nn.Conv2d(conv.in_channels, rank, conv.kernel_size, stride=conv.stride,
                                padding=conv.padding, dilation=conv.dilation, bias=False, **kwargs)
        self.lora_b = nn.Conv2d(rank, conv.out_channels, 1, bias=False, **kwargs)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        conv.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.scaling * self.lora_b(self.lora_a(x))

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / rank) * B A`` in the shape of the wrapped layer's weight."""
        b = self.lora_b.weight.flatten(1)                      # (out, rank)
        a = self.lora_a.weight.flatten(1)                      # (rank, in * kh * kw)
        return (self.scaling * b @ a).reshape(self.conv.weight.shape)

    @torch.no_grad()
    def merged(self) -> nn.Conv2d:
        """A plain, frozen ``Conv2d`` computing the same function (weight ``W + delta``)."""
        conv = self.conv
        out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                        padding=conv.padding, dilation=conv.dilation, groups=1, bias=conv.bias is not None,
                        device=conv.weight.device, dtype=conv.weight.dtype)
        out.weight.copy_(conv.weight + self.delta_weight())
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
        return out.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def _head_name(model: nn.Module) -> str | None:
    try:
        return find_head(model)[0]
    except HeadNotFoundError:
        return None


def lora_targets(model: nn.Module) -> list[str]:
    """Names of the 1x1 convolutions with ``groups=1`` (the pointwise ones), the head excluded."""
    head = _head_name(model)
    inside = {f"{name}.{child}" for name, module in model.named_modules() if isinstance(module, LoRAConv2d)
              for child in ("conv", "lora_a", "lora_b")}
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
            and name != head and name not in inside]


def add_lora(model: nn.Module, rank: int = 4, alpha: float | None = None,
             targets: list[str] | None = None) -> list[str]:
    """Wrap each target convolution of ``model`` in :class:`LoRAConv2d`, in place; return their names.

    ``targets`` defaults to :func:`lora_targets` (every pointwise convolution but the head).
    The wrapped weights are frozen; nothing else changes its ``requires_grad``, so freeze the
    rest of the backbone first (``freezing.freeze_backbone``) and the trainable parameters are
    then the LoRA factors plus the head. Every target is checked before anything is wrapped.
    """
    if targets is None:
        if any(isinstance(m, LoRAConv2d) for m in model.modules()):
            raise ValueError(f"{type(model).__name__} already has LoRA layers; nothing was wrapped "
                             "(merge_lora first to start again)")
        targets = lora_targets(model)
    targets = list(targets)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no convolution to adapt: LoRA here targets "
                         "Conv2d layers with groups=1 (pass targets=[...names...] to choose)")
    modules = dict(model.named_modules())
    for name in targets:
        module = modules.get(name)
        if module is None:
            raise KeyError(f"No module named {name!r} in {type(model).__name__}; nothing was wrapped")
        if isinstance(module, LoRAConv2d):
            raise ValueError(f"{name} already has LoRA; nothing was wrapped "
                             "(merge_lora first to start again)")
        if not isinstance(module, nn.Conv2d) or module.groups != 1:
            raise ValueError(f"{name} is a {type(module).__name__}"
                             + (f" with groups={module.groups}" if isinstance(module, nn.Conv2d) else "")
                             + "; LoRA targets Conv2d layers with groups=1. Nothing was wrapped.")
    # build every wrapper first (this validates rank and alpha), then swap them in
    wrapped = [LoRAConv2d(modules[name], rank, alpha) for name in targets]
    for name, module in zip(targets, wrapped, strict=True):
        swap_module(model, name, module)
    return targets


def merge_lora(model: nn.Module) -> list[str]:
    """Replace every :class:`LoRAConv2d` in ``model`` by its merged plain ``Conv2d``, in place.

    The network computes the same function (up to float rounding) and has no LoRA modules left;
    the merged layers are frozen, as the weights they replace were. Returns the names merged.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, LoRAConv2d)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no LoRAConv2d layers to merge (add_lora adds them)")
    for name in names:
        swap_module(model, name, model.get_submodule(name).merged())
    return names
