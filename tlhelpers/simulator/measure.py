"""Measure what a backward pass costs, block by block, and where its gradients go.

Two measurements, both real forward and backward passes under
``torch.utils.flop_counter.FlopCounterMode`` (FLOPs) and ``torch.autograd.graph.saved_tensors_hooks``
(bytes of the activations autograd keeps for backward):

* :func:`measure_cases` measures each block on its own, in each *case* it can be in: the
  input does or does not need a gradient, times the block's own state (trainable, frozen,
  frozen with BatchNorm in train mode, frozen with its normalisation scale and shift trainable).
  It cuts the forward pass at the start of every block (the input is detached there, and made
  to require a gradient when the case says so) and runs a separate backward pass per block.
  :class:`~tlhelpers.simulator.costs.CostTable` adds these up for any configuration: that is
  how the widget redraws a new configuration's cost in the browser, with no kernel call.
* :func:`measure_cost` measures one whole configuration directly, as one real step would run
  it, with tensor hooks to see which blocks the gradient reached. The tests check the sums
  against it.

Neither leaves a trace: gradients are taken with ``torch.autograd.grad`` (nothing accumulates
in ``.grad``); ``requires_grad`` flags, BatchNorm running statistics, train/eval flags and the
random number generator are restored.

Measuring every case of MobileNetV2 (default batch, 3 cases per block) took 640 ms, 3.4 bare
training steps with every block trainable (``benchmarks/run.py --only simulator``, 2 CPU cores
with a load average near 3); it is done once per simulator and input shape.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

import tlhelpers.simulator.vocabulary as vocabulary  # the module itself, not the package face
from tlhelpers.simulator.blocks import Block, Layout
from tlhelpers.simulator.report import Cost


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None,
                        **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``, correct for grouped and depthwise convolutions.

    Each requested gradient (input, weight) costs as many multiply-adds as the forward
    convolution. The formula in torch 2.14.1 (``conv_backward_flop`` in
    ``torch/utils/flop_counter.py``) leaves ``groups`` out of the weight gradient and so counts
    it ``groups`` times over: 32x for a depthwise 3x3 convolution over 32 channels (asserted in
    ``tests/test_simulator_costs.py``, so this note fails a test once torch changes), and 7.66
    GFLOP instead of 0.81 GFLOP (9.5x) for a whole MobileNetV2 backward pass on the default
    batch. Its input-gradient and forward counts are right. pytorch/pytorch#183405 (May 2026)
    proposes dividing by ``groups``; 2.14.1 does not have it.
    """
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


FLOP_FORMULAS = {torch.ops.aten.convolution_backward: _conv_backward_flop}


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` with the corrected convolution-backward formula."""
    return FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def referenced_span(tensor: torch.Tensor) -> tuple[int, int]:
    """The bytes of its storage a tensor references: (first byte, one past its last byte).

    A view (``cache[:32]``, ``x.t()``) references part of a storage that may be much larger;
    counting ``storage.nbytes()`` charges a batch sliced from a 500-image cache for the whole
    cache. A strided view counts from its first to its last element.
    """
    if tensor.numel() == 0:
        return 0, 0
    item = tensor.element_size()
    start = tensor.storage_offset() * item
    extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(tensor.shape, tensor.stride(), strict=False))
    return start, start + extent * item


def _storage_key(tensor: torch.Tensor) -> tuple[int, int, int] | None:
    """(storage address, first byte, end byte): which storage a tensor lives in and the part it references."""
    try:
        address = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. meta)
        return None
    return (address, *referenced_span(tensor))


def referenced_bytes(keys) -> int:
    """Bytes referenced by the tensors behind ``keys`` (from :func:`_storage_key`): each storage once,
    the union of the parts its tensors reference (two views of one batch are not counted twice)."""
    by_storage: dict[int, list[tuple[int, int]]] = {}
    for key in keys:
        if key is not None:
            by_storage.setdefault(key[0], []).append((key[1], key[2]))
    total = 0
    for spans in by_storage.values():
        end = -1
        for first, last in sorted(spans):
            if last > end:
                total += last - max(first, end)
                end = last
    return total


def saved_bytes(step: Callable[[], object], exclude: nn.Module | None = None) -> int:
    """Bytes of the tensors autograd saves for backward while ``step()`` runs its forward pass.

    Each storage is counted once, and only the part its saved tensors reference
    (:func:`referenced_bytes`); storages of ``exclude``'s parameters and buffers are left out
    (they are in memory anyway).
    """
    excluded = _model_storages(exclude) if exclude is not None else set()
    keys = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key is not None and key[0] not in excluded:
            keys.append(key)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return referenced_bytes(keys)


def _model_storages(model: nn.Module) -> set:
    """Addresses of the storages of parameters and buffers: in memory anyway, never counted as saved
    activations (nor is any view of them)."""
    return {key[0] for key in map(_storage_key, [*model.parameters(), *model.buffers()]) if key is not None}


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Restore flags, train/eval modes, buffers and the RNG after measuring."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


# --------------------------------------------------------------------------- one configuration

def measure_cost(model: nn.Module, compute_loss: Callable[[], torch.Tensor],
                 blocks: Mapping[str, Block], layout: Layout) -> Cost:
    """Measure FLOPs, saved activations and the gradient path of one step of ``model`` as it is.

    The model's current ``requires_grad`` flags and train/eval modes are what is measured.
    ``blocks`` are the simulator's blocks in forward order, ``layout`` where they run. A block
    is *reached* when a gradient arrives at the output of one of its modules or at one of its
    parameters; a reached block without trainable parameters whose input requires a gradient
    is *pass-through* (backward computes its input's gradient). Saved activation bytes count
    each storage autograd keeps for backward once, and only the part its saved tensors reference
    (:func:`referenced_bytes`), leaving out parameters and buffers (they are in memory anyway).
    """
    start = time.perf_counter()
    order = list(blocks)
    named = dict(model.named_parameters())
    trainable = [(name, named[p]) for name, block in blocks.items() for p in block.parameters
                 if named[p].requires_grad]
    others = [p for p in model.parameters() if p.requires_grad and all(p is not q for _, q in trainable)]
    excluded = _model_storages(model)
    saved: set[tuple[int, int, int]] = set()
    reached: set[str] = set()
    reached_input: set[str] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key is not None and key[0] not in excluded:
            saved.add(key)
        return tensor

    def watch(tensors, seen: set[str], name: str) -> None:
        for tensor in _tensors(tensors):
            if tensor.requires_grad:
                tensor.register_hook(lambda grad, name=name: seen.add(name))

    def input_needs_grad(args, name: str) -> None:
        # Recorded in the forward pass rather than with a gradient hook: an in-place first
        # operation (EfficientNet's Dropout(inplace=True)) would hide the hook.
        if any(t.requires_grad for t in _tensors(args)):
            reached_input.add(name)

    entries = {segment.entry: segment.entry_module for segment in layout.segments if segment.entry}
    handles = []
    for name, block in blocks.items():
        for module_name in block.modules:
            module = model.get_submodule(module_name)
            handles.append(module.register_forward_hook(
                lambda _m, _args, output, name=name: watch(output, reached, name)))
            if entries.get(name) == module_name:
                handles.append(module.register_forward_pre_hook(
                    lambda _m, args, name=name: input_needs_grad(args, name)))
    with untouched(model):
        try:
            with flop_counter() as forward_counter, \
                    torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                loss = compute_loss()
        finally:
            for handle in handles:
                handle.remove()
        backward_flops = 0
        if loss.requires_grad:
            wanted = [p for _, p in trainable] + others
            with flop_counter() as backward_counter:
                grads = torch.autograd.grad(loss, wanted, allow_unused=True)
            backward_flops = backward_counter.get_total_flops()
            reached.update(name for (name, _), grad in zip(trainable, grads, strict=True) if grad is not None)

    has_trainable = {name for name, _ in trainable}
    flow = tuple(name for name in reversed(order) if name in reached)
    earliest = min((order.index(name) for name in flow), default=None)
    stop_at = order[earliest - 1] if earliest else None
    pass_through = tuple(name for name in order
                         if name not in has_trainable and name in reached_input and name in reached)
    return Cost(
        forward_flops=int(forward_counter.get_total_flops()),
        backward_flops=int(backward_flops),
        saved_activation_bytes=referenced_bytes(saved),
        flow=flow,
        stop_at=stop_at,
        pass_through=pass_through,
        measure_ms=(time.perf_counter() - start) * 1000.0,
    )


# --------------------------------------------------------------------------- block by block

#: A block's state: trainable, frozen (BatchNorm in eval mode), frozen with BatchNorm left in
#: train mode (statistics drift), frozen but its normalisation layers' scale and shift trainable.
STATES = ("t", "f", "d", "a")
#: States in which a block has trainable parameters (its output needs a gradient): vocabulary's.
TRAINING_STATES = vocabulary.TRAINING_STATES


def case_key(input_needs_grad: bool, states: Sequence[str]) -> str:
    """``"1tf"``: the input needs a gradient, the segment's first block is trainable, the next frozen."""
    return ("1" if input_needs_grad else "0") + "".join(states)


def is_idle(key: str) -> bool:
    """A case in which backward never enters the segment (nothing in or before it trains)."""
    return key[0] == "0" and not any(state in TRAINING_STATES for state in key[1:])


@dataclass(frozen=True)
class CaseCost:
    """What one segment costs in one case.

    ``backward_flops``: its part of the backward pass. ``own_bytes``: activations it saves
    for backward, apart from the tensors at its borders. ``saves_input`` / ``saves_output``:
    for each tensor storage at its input / output border, whether it saves it; a border
    storage is counted once even when both neighbours save it.
    """

    backward_flops: int
    own_bytes: int
    saves_input: tuple[bool, ...]
    saves_output: tuple[bool, ...]


@dataclass(frozen=True)
class CaseMeasurement:
    """All measured cases: ``cases[segment][key]``, the border storages' sizes and the forward FLOPs."""

    cases: tuple[dict[str, CaseCost], ...]
    input_bytes: tuple[tuple[int, ...], ...]
    forward_flops: int | None  # None when no pass ran the whole forward pass
    measure_ms: float


class ChainError(ValueError):
    """The blocks do not form a chain: a block's input depends on more than the block before it."""


class _Stop(Exception):
    """Raised by a segment's entry hook once every wanted segment has its output: ends the forward pass."""


class _PassRecorder:
    """What one forward pass of :func:`measure_cases` records, segment by segment.

    Each segment's entry hook (:meth:`enter`) keeps the segment's raw inputs and cuts them loose
    from the graph before it (a leaf that requires grad only where the case trains the border),
    and the saved-tensor hook (:meth:`pack`) books every tensor autograd saves to the segment
    running at that moment.
    """

    def __init__(self, cases: Mapping[int, str], segments: int, excluded: set):
        self.cases, self.excluded = cases, excluded
        self.last = max(cases, default=0)
        self.raw_inputs: dict[int, list[torch.Tensor]] = {}
        self.leaves: dict[int, list[torch.Tensor]] = {}
        self.saved: list[set[tuple[int, int, int]]] = [set() for _ in range(segments)]
        self.aliases: dict = {}
        self.current = 0
        self.loss: torch.Tensor | None = None

    def enter(self, module: nn.Module, args, index: int):
        if index in self.raw_inputs:  # a second call of the same entry module: not a new segment
            return None
        self.raw_inputs[index] = [t for t in _tensors(args) if t.is_floating_point()]
        if index > self.last:  # every wanted segment has its output: stop the forward pass here
            raise _Stop
        self.current = index
        needs_grad = self.cases.get(index, "0")[0] == "1"
        detached: list[torch.Tensor] = []
        new_args = self._cut(args, needs_grad, detached)
        self.leaves[index] = detached
        return new_args

    def _cut(self, value, needs_grad: bool, detached: list[torch.Tensor]):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            leaf = value.detach().requires_grad_(needs_grad)
            detached.append(leaf)
            if not needs_grad:
                return leaf
            # A leaf that requires grad cannot be changed in place (EfficientNet's classifier
            # starts with Dropout(inplace=True)): hand on a copy, and count what is saved of the
            # copy as saved of the border tensor.
            copied = leaf.clone()
            self.aliases[_storage_key(copied)] = _storage_key(value)
            return copied
        if isinstance(value, (tuple, list)):
            return type(value)(self._cut(v, needs_grad, detached) for v in value)
        return value

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        key = self.aliases.get(key, key)
        if key is not None and key[0] not in self.excluded:
            self.saved[self.current].add(key)
        return tensor

    def outputs_of(self, index: int) -> list[torch.Tensor]:
        """A segment's outputs: the next segment's raw inputs, or the loss for the last one."""
        if index + 1 < len(self.saved):
            return self.raw_inputs.get(index + 1, [])
        return [self.loss] if self.loss is not None else []


def _record_pass(model: nn.Module, compute_loss: Callable[[], torch.Tensor], entry_index: Mapping[str, int],
                 recorder: _PassRecorder, count_flops: bool) -> int | None:
    """Run one forward pass with the recorder's hooks in place; the forward FLOPs when counted."""
    handles = [model.get_submodule(name).register_forward_pre_hook(
        lambda m, args, index=index: recorder.enter(m, args, index)) for name, index in entry_index.items()]
    counter = flop_counter() if count_flops else contextlib.nullcontext()
    try:
        with counter, torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda tensor: tensor):
            recorder.loss = compute_loss()
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return int(counter.get_total_flops()) if count_flops and recorder.loss is not None else None


def _case_cost(recorder: _PassRecorder, index: int, segments, blocks: Mapping[str, Block],
               named: Mapping[str, nn.Parameter]) -> CaseCost:
    """One segment's cost in its case: backward FLOPs from its outputs to its own parameters and
    border, and the bytes saved inside it and at its borders."""
    outputs = [t for t in recorder.outputs_of(index) if t.requires_grad]
    own_params = [named[p] for b in segments[index].blocks for p in blocks[b].parameters if named[p].requires_grad]
    inputs = own_params + [t for t in recorder.leaves.get(index, []) if t.requires_grad]
    _check_chain(outputs, set(map(id, inputs)), segments, index, blocks)
    flops = 0
    if outputs and inputs:
        with flop_counter() as backward_counter:
            torch.autograd.grad(outputs, inputs, allow_unused=True, grad_outputs=[torch.ones_like(t) for t in outputs])
        flops = int(backward_counter.get_total_flops())
    borders_in = [_storage_key(t) for t in recorder.raw_inputs.get(index, [])]
    last_segment = index + 1 == len(segments)
    borders_out = [] if last_segment else [_storage_key(t) for t in recorder.outputs_of(index)]
    mine = recorder.saved[index]
    borders = {key[0] for key in [*borders_in, *borders_out] if key is not None}
    own = referenced_bytes(key for key in mine if key[0] not in borders)
    stored = {key[0] for key in mine}
    return CaseCost(flops, int(own), tuple(b is not None and b[0] in stored for b in borders_in),
                    tuple(b is not None and b[0] in stored for b in borders_out))


def measure_cases(model: nn.Module, compute_loss: Callable[[], torch.Tensor], blocks: Mapping[str, Block],
                  layout: Layout, wanted: Sequence[dict[int, str]],
                  apply_states: Callable[[Mapping[str, str]], None]) -> CaseMeasurement:
    """Measure the segments of ``layout`` in the cases ``wanted``.

    ``wanted`` is a list of passes, each mapping segment index -> case key (see
    :func:`case_key`); one forward pass measures every segment of a pass at once, because the
    input of each segment is cut loose from the one before (:class:`_PassRecorder`).
    ``apply_states(states)`` sets ``requires_grad`` and BatchNorm modes for per-block states
    (the simulator owns that rule). Segments not in a pass are idle in it. Raises
    :class:`ChainError` when a segment's output depends on anything before it other than its
    own input (a skip connection across blocks, or a parameter shared between blocks).
    """
    start = time.perf_counter()
    segments = layout.segments
    named = dict(model.named_parameters())
    excluded = _model_storages(model)
    results: list[dict[str, CaseCost]] = [{} for _ in segments]
    input_bytes: list[tuple[int, ...]] = [() for _ in segments]
    forward_flops: int | None = None
    entry_index = {segment.entry_module: index for index, segment in enumerate(segments) if segment.entry}
    with untouched(model):
        for cases in wanted:
            states = {}
            for index, segment in enumerate(segments):
                key = cases.get(index, "0" + "f" * len(segment.blocks))
                states.update(zip(segment.blocks, key[1:], strict=True))
            apply_states(states)
            recorder = _PassRecorder(cases, len(segments), excluded)
            counted = _record_pass(model, compute_loss, entry_index, recorder, count_flops=forward_flops is None)
            forward_flops = counted if counted is not None else forward_flops
            for index, tensors in recorder.raw_inputs.items():
                input_bytes[index] = tuple(end - first for first, end in map(referenced_span, tensors))
            for index, key in cases.items():
                results[index][key] = _case_cost(recorder, index, segments, blocks, named)
    return CaseMeasurement(tuple(results), tuple(input_bytes), forward_flops,
                           (time.perf_counter() - start) * 1000.0)


def _check_chain(outputs: Sequence[torch.Tensor], allowed: set[int], segments, index: int,
                 blocks: Mapping[str, Block]) -> None:
    """Walk the backward graph from ``outputs``: every leaf it needs must be one of ``allowed``."""
    seen, stack = set(), [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf tensor
        if variable is not None and id(variable) not in allowed:
            name = segments[index].entry or "the start of the forward pass"
            raise ChainError(f"The output of block {name!r} depends on a tensor from an earlier block other "
                             "than through its own input (a skip connection across blocks, or a parameter "
                             "shared between blocks). The simulator needs blocks that form a chain: merge "
                             "the blocks the connection spans into one block.")
        stack.extend(next_node for next_node, _ in node.next_functions)
