"""How far did fine-tuning move each block? Feature similarity (linear CKA) and weight change.

Two views of "feature distortion" (Kumar et al. ICLR 2022):

* :func:`linear_cka` compares what two networks *compute*: the block outputs of both on the
  same inputs. Linear centred kernel alignment (Kornblith et al. ICML 2019) is 1 for
  representations that differ only by a rotation or a uniform scale, and falls towards 0 as they
  stop sharing structure. :func:`block_similarity` gives it per block for two models.
* :func:`relative_change` compares the *weights*: ``|w_after - w_before| / |w_before|`` per
  block (Frobenius norms over all the block's parameters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from tlhelpers.models import under
from tlhelpers.runtime import evaluating, model_device


def _as_matrix(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape (examples, features...), got {shape}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x.flatten(1).double()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two representations of the same examples (rows), in [0, 1].

    ``x`` is (N, ...) and ``y`` (N, ...); trailing dimensions are flattened, so block outputs
    (N, C, H, W) go in as they are and the widths may differ. Computed from the centred Gram
    matrices, ``<K, L> / (|K| |L|)`` with ``K = Xc Xc^T``, ``L = Yc Yc^T``, in float64.
    """
    x, y = _as_matrix("x", x), _as_matrix("y", y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples and y {len(y)}; CKA compares two representations "
                         "of the same examples, row by row")
    if len(x) < 2:
        raise ValueError("CKA needs at least 2 examples")
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    gram_x, gram_y = x @ x.T, y @ y.T
    norm_x, norm_y = torch.linalg.matrix_norm(gram_x), torch.linalg.matrix_norm(gram_y)
    for name, norm in (("x", norm_x), ("y", norm_y)):
        if norm == 0:
            raise ValueError(f"{name} is the same for every example (no variance); CKA is undefined")
    return float((gram_x * gram_y).sum() / (norm_x * norm_y))


@torch.no_grad()
def block_outputs(model: nn.Module, inputs: torch.Tensor, blocks: Mapping[str, Sequence[str]],
                  batch_size: int = 250) -> dict[str, torch.Tensor]:
    """The output of each block on ``inputs``, in eval mode: ``{block: (N, C, H, W) tensor}``.

    ``blocks`` maps block names to module names, input to output (``models.layer_groups``);
    a block's output is its last module's. Forward hooks record them (a forward hook is a
    function PyTorch calls with a module's output each time the module runs).
    """
    if not blocks:
        raise ValueError("blocks is empty; pass e.g. models.layer_groups(model)")
    modules = dict(model.named_modules())
    missing = [m for names in blocks.values() for m in names[-1:] if m not in modules]
    empty = [name for name, names in blocks.items() if not names]
    if missing or empty:
        raise KeyError(f"blocks name modules the model does not have: {missing or empty}; "
                       f"top-level modules: {', '.join(n for n, _ in model.named_children())}")
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}
    handles = [modules[names[-1]].register_forward_hook(
        lambda _m, _args, output, name=name: captured[name].append(output.detach().cpu()))
        for name, names in blocks.items()]
    device = model_device(model)
    try:
        with evaluating(model):
            for chunk in inputs.split(batch_size):
                model(chunk.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in captured.items()}


def block_similarity(model_a: nn.Module, model_b: nn.Module, inputs: torch.Tensor,
                     blocks: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Linear CKA between the two models' outputs of each block, on the same ``inputs``."""
    a = block_outputs(model_a, inputs, blocks)
    b = block_outputs(model_b, inputs, blocks)
    return {name: linear_cka(a[name], b[name]) for name in blocks}


@torch.no_grad()
def relative_change(before: nn.Module, after: nn.Module,
                    blocks: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Per block, ``|w_after - w_before| / |w_before|`` over all the block's parameters.

    0 means untouched; 0.01 means the weights moved by 1% of their size. Both models must have
    the same parameters (merge LoRA adapters first).
    """
    params_b, params_a = dict(before.named_parameters()), dict(after.named_parameters())
    if params_b.keys() != params_a.keys() or any(params_b[k].shape != params_a[k].shape for k in params_b):
        raise ValueError("before and after must have the same parameters (names and shapes); "
                         "merge LoRA adapters (lora.merge_lora) and use the same head first")
    changes = {}
    for block, prefixes in blocks.items():
        names = [n for n in params_b if any(under(n, p) for p in prefixes)]
        if not names:
            raise KeyError(f"block {block!r} ({', '.join(prefixes)}) has no parameters")
        moved = sum(float((params_a[n].double() - params_b[n].double()).pow(2).sum()) for n in names)
        size = sum(float(params_b[n].double().pow(2).sum()) for n in names)
        changes[block] = (moved ** 0.5) / (size ** 0.5) if size else float("inf")
    return changes
