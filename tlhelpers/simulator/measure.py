"""Measure what one backward pass costs and where its gradients go, without training.

:func:`measure_cost` runs a real forward and backward pass under
``torch.utils.flop_counter.FlopCounterMode`` and ``torch.autograd.graph.saved_tensors_hooks``,
with tensor hooks at every block's input and output to see which blocks the gradient reached.
It leaves no trace: gradients are taken with ``torch.autograd.grad`` (nothing accumulates in
``.grad``), BatchNorm running statistics and the random number generator are restored.

Measuring is about 2.5x slower than a bare step, and the result depends only on the frozen
set, the BatchNorm mode and the input shape, so the simulator caches it per configuration.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from tlhelpers.simulator.report import Cost


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None,
                        **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``, correct for grouped and depthwise convolutions.

    Each requested gradient (input, weight) costs as many multiply-adds as the forward
    convolution. torch's built-in formula (2.14) forgets ``groups`` in the weight gradient and
    counts a depthwise convolution's weight gradient ``groups`` times over: about 10x too much
    backward compute for MobileNetV2 (fixed upstream in pytorch/pytorch#183405).
    """
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


FLOP_FORMULAS = {torch.ops.aten.convolution_backward: _conv_backward_flop}


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _watch(tensors, seen: set[str], name: str) -> None:
    """Record ``name`` in ``seen`` when a gradient arrives at any of ``tensors``."""
    for tensor in _tensors(tensors):
        if tensor.requires_grad:
            tensor.register_hook(lambda grad, name=name: seen.add(name))


def _storage_key(tensor: torch.Tensor) -> tuple[int, int] | None:
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. meta)
        return None


def measure_cost(model: nn.Module, compute_loss: Callable[[], torch.Tensor],
                 blocks: Mapping[str, Sequence[str]]) -> Cost:
    """Measure FLOPs, saved activations and the gradient path of one step of ``model``.

    ``compute_loss`` runs the forward pass and returns the scalar loss; ``blocks`` maps block
    names, input to output, to the names of their modules. The model's current
    ``requires_grad`` flags and train/eval modes are what is measured. Saved activation bytes
    count each storage autograd keeps for backward once, leaving out the parameters themselves
    (they are in memory anyway).
    """
    start = time.perf_counter()
    order = list(blocks)
    parameters = [p for p in model.parameters() if p.requires_grad]
    parameter_storages = {_storage_key(p) for p in model.parameters()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    saved: dict[tuple[int, int], int] = {}
    reached_output: set[str] = set()
    reached_input: set[str] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key is not None and key not in parameter_storages:
            saved[key] = key[1]
        return tensor

    handles = []
    for name, module_names in blocks.items():
        first = model.get_submodule(module_names[0])
        last = model.get_submodule(module_names[-1])
        handles.append(first.register_forward_pre_hook(
            lambda _m, args, name=name: _watch(args, reached_input, name)))
        handles.append(last.register_forward_hook(
            lambda _m, _args, output, name=name: _watch(output, reached_output, name)))
    try:
        with torch.random.fork_rng(devices=[]):
            with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as forward_counter, \
                    torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                loss = compute_loss()
            backward_flops = 0
            if parameters and loss.requires_grad:
                with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as backward_counter:
                    torch.autograd.grad(loss, parameters, allow_unused=True)
                backward_flops = backward_counter.get_total_flops()
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])

    flow = tuple(name for name in reversed(order) if name in reached_output)
    earliest = min((order.index(name) for name in flow), default=None)
    stop_at = order[earliest - 1] if earliest else None
    frozen = {name for name, module_names in blocks.items()
              if not any(p.requires_grad for m in module_names
                         for p in model.get_submodule(m).parameters())}
    pass_through = tuple(name for name in order if name in frozen and name in reached_input)
    return Cost(
        forward_flops=int(forward_counter.get_total_flops()),
        backward_flops=int(backward_flops),
        saved_activation_bytes=int(sum(saved.values())),
        flow=flow,
        stop_at=stop_at,
        pass_through=pass_through,
        measure_ms=(time.perf_counter() - start) * 1000.0,
    )
