"""The simulator's blocks: which parameters each one owns, and where it runs in the forward pass.

A block is a named group of *members*, each a module name (``"layer4"``) or a parameter name
(ViT's ``"class_token"``), as :func:`tlhelpers.freezing.resolve` reads them: a member owns every
parameter whose qualified name equals it or starts with it followed by a dot.

:func:`forward_layout` runs the model once (no gradients) and watches which block's modules are
called and which block's parameters are used, in order. That gives the order in which the
forward pass uses the blocks (ViT uses ``class_token`` after ``conv_proj``, although the model
holds it first) and cuts the forward pass into *segments*: one per block that has modules,
starting where its first module is called and ending where the next such block starts. A block
made only of parameters belongs to the segment in which they are used. The simulator's cost
model and its picture of the backward path rest on this chain: each segment gets its input from
the one before. A model whose blocks do not form one (a block that runs again after a later one
started, a parameter used in two segments) is refused with an error that says which blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from tlhelpers.freezing import BATCHNORM_TYPES, batchnorm_layers
from tlhelpers.models import under

#: Normalisation layers whose scale and shift (``weight``, ``bias``) the "norm affine" switch trains.
NORM_TYPES = (*BATCHNORM_TYPES, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class Block:
    """One block: its name, its members as given, and the parameters and modules they cover.

    ``modules`` are the members that name modules; a block without any (ViT's ``class_token``)
    is a *parameter block*: it has no input of its own, its parameters join the computation
    inside another block's segment.
    """

    name: str
    members: tuple[str, ...]
    parameters: tuple[str, ...]
    modules: tuple[str, ...]

    @property
    def is_parameter_block(self) -> bool:
        return not self.modules


def resolve_blocks(model: nn.Module, blocks: Mapping[str, Sequence[str] | str]) -> list[Block]:
    """Check ``blocks`` (name -> members) against ``model`` and say what each one owns.

    A member is a module name or a parameter name; a plain string is one member. Unknown
    members, blocks without parameters and parameters claimed by two blocks are errors that
    say which block and what to do.
    """
    if not isinstance(blocks, Mapping) or not blocks:
        raise ValueError("blocks must be a non-empty mapping: block name -> module or parameter names")
    modules = {name for name, _ in model.named_modules() if name}
    parameters = [name for name, _ in model.named_parameters()]
    resolved: list[Block] = []
    owner: dict[str, str] = {}
    for name, members in blocks.items():
        members = (members,) if isinstance(members, str) else tuple(members)
        missing = [m for m in members if not isinstance(m, str)
                   or (m not in modules and not any(under(p, m) for p in parameters))]
        if missing or not members:
            top = ", ".join(n for n, _ in model.named_children())
            direct = ", ".join(n for n, _ in model.named_parameters(recurse=False))
            raise KeyError(f"Block {name!r} names module(s) or parameter(s) {missing or list(members)} that "
                           f"the model does not have. Use dotted names; top-level modules are: {top}"
                           + (f"; parameters held by the model itself: {direct}" if direct else ""))
        owned = tuple(p for p in parameters if any(under(p, m) for m in members))
        if not owned:
            raise ValueError(f"Block {name!r} ({', '.join(members)}) has no parameters to freeze")
        for p in owned:
            if owner.get(p, name) != name:
                raise ValueError(f"Blocks {owner[p]!r} and {name!r} share parameter {p!r}; "
                                 "each parameter must belong to one block")
            owner[p] = name
        resolved.append(Block(name, members, owned, tuple(m for m in members if m in modules)))
    return resolved


def norm_parameters(model: nn.Module, block: Block) -> tuple[str, ...]:
    """The block's parameters that are the scale and shift of a normalisation layer."""
    owned = set(block.parameters)
    found = []
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            for short, _ in module.named_parameters(recurse=False):
                qualified = f"{module_name}.{short}" if module_name else short
                if qualified in owned:
                    found.append(qualified)
    return tuple(found)


def block_batchnorms(model: nn.Module, block: Block) -> list[nn.Module]:
    """The BatchNorm layers (with running statistics) inside the block's module members."""
    return [module for name, module in batchnorm_layers(model).items()
            if any(under(name, m) for m in block.modules)]


@dataclass(frozen=True)
class Segment:
    """A stretch of the forward pass: from ``entry``'s first call to the next segment's.

    ``entry`` is the block with modules that starts it (``None`` for the prelude, the
    operations before the first such block, e.g. GoogLeNet's input transform) and
    ``entry_module`` the module whose call starts it; ``attached`` are the parameter blocks
    used inside it. ``blocks`` lists them all in forward order.
    """

    entry: str | None
    entry_module: str | None
    attached: tuple[str, ...]

    @property
    def blocks(self) -> tuple[str, ...]:
        return ((self.entry,) if self.entry else ()) + self.attached


@dataclass(frozen=True)
class Layout:
    """The blocks in forward order and the segments the forward pass is cut into."""

    order: tuple[str, ...]
    segments: tuple[Segment, ...]

    def segment_of(self, block: str) -> int:
        for index, segment in enumerate(self.segments):
            if block in segment.blocks:
                return index
        raise KeyError(block)


class _ParameterUses(TorchFunctionMode):
    """Record, in call order, which block's parameters each torch function receives."""

    def __init__(self, owner: dict[int, str], events: list[tuple[str, str, str | None]]):
        super().__init__()
        self.owner, self.events = owner, events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for value in tree_leaves((args, kwargs)):
            block = self.owner.get(id(value))
            if block is not None:
                self.events.append(("use", block, None))
        return func(*args, **kwargs)


def forward_layout(model: nn.Module, blocks: Sequence[Block], run_forward: Callable[[], object]) -> Layout:
    """Run ``run_forward()`` once without gradients and lay the blocks out along it.

    The model's train/eval flags are what ``run_forward`` sees; nothing is changed (no
    gradients are recorded; call it on a model in eval mode so BatchNorm statistics stay).
    """
    parameters = dict(model.named_parameters())
    owner = {id(parameters[p]): block.name for block in blocks for p in block.parameters}
    events: list[tuple[str, str, str | None]] = []
    handles = []
    for block in blocks:
        for module_name in block.modules:
            def called(_module, _args, block=block.name, module=module_name):
                events.append(("call", block, module))

            handles.append(model.get_submodule(module_name).register_forward_pre_hook(called))
    try:
        with torch.no_grad(), _ParameterUses(owner, events):
            run_forward()
    finally:
        for handle in handles:
            handle.remove()

    by_name = {block.name: block for block in blocks}
    unused = [b.name for b in blocks if not any(e[1] == b.name for e in events)]
    if unused:
        raise ValueError(f"Block(s) {', '.join(map(repr, unused))} take no part in the forward pass (their "
                         "parameters are never used), so freezing them changes nothing; leave them out "
                         "of blocks")
    starts: list[tuple[int, str, str]] = []  # (event index, block, entry module) of blocks with modules
    for index, (kind, block, module) in enumerate(events):
        if kind == "call" and block not in {s[1] for s in starts}:
            starts.append((index, block, module))
    bounds = [s[0] for s in starts] + [len(events)]

    def window(index: int) -> int:
        """-1 for the prelude, else the position in ``starts`` of the segment running at ``index``."""
        return sum(1 for b in bounds[:-1] if b <= index) - 1

    attached: dict[int, list[str]] = {}
    for block in blocks:
        windows = {window(i) for i, e in enumerate(events) if e[1] == block.name}
        if block.is_parameter_block:
            if len(windows) > 1:
                names = [starts[w][1] if w >= 0 else "the start of the forward pass" for w in sorted(windows)]
                raise ValueError(f"Block {block.name!r} is used in several blocks' parts of the forward "
                                 f"pass ({', '.join(names)}); the simulator needs blocks that run one after "
                                 "another. Put its parameters into one of those blocks.")
            attached.setdefault(windows.pop(), []).append(block.name)
        else:
            own = next(i for i, s in enumerate(starts) if s[1] == block.name)
            later = sorted(w for w in windows if w != own)
            if later:
                other = starts[later[0]][1] if later[0] >= 0 else "the start"
                raise ValueError(f"Block {block.name!r} runs again after block {other!r} started (or shares "
                                 "parameters with it); the simulator needs blocks that run one after another "
                                 "in the forward pass. Merge them into one block.")
    for names in attached.values():  # parameter blocks in the order of their first use
        names.sort(key=lambda n: next(i for i, e in enumerate(events) if e[1] == n))
    segments = [Segment(None, None, tuple(attached.get(-1, [])))]
    segments += [Segment(block, module, tuple(attached.get(i, [])))
                 for i, (_, block, module) in enumerate(starts)]
    order = tuple(name for segment in segments for name in segment.blocks)
    assert sorted(order) == sorted(by_name), (order, list(by_name))
    return Layout(order, tuple(segments))


def ordered(blocks: Sequence[Block], layout: Layout) -> OrderedDict[str, Block]:
    """``blocks`` keyed by name, in the forward order of ``layout``."""
    by_name = {block.name: block for block in blocks}
    return OrderedDict((name, by_name[name]) for name in layout.order)
