"""Exercise checks for 02 · Inspecting and freezing.

The learner writes freezing in plain PyTorch as a function; the check runs it on copies of the
learner's own model, once fully trainable and once fully frozen (a function that only sets
``False`` or only ``True`` passes one of the two), and compares which parameters train with
a reference it computes from the copy's module names and types.
"""

from __future__ import annotations

import copy

from torch import nn

from tlhelpers.exercises import Exercise, Wrong, register


def _copies(model: nn.Module) -> dict[str, nn.Module]:
    """Two copies of ``model``: every parameter trainable, and every parameter frozen."""
    copies = {}
    for start, flag in (("a fully trainable model", True), ("a fully frozen model", False)):
        net = copy.deepcopy(model)
        for parameter in net.parameters():
            parameter.requires_grad = flag
        copies[start] = net
    return copies


def _trainable(net: nn.Module) -> set[str]:
    return {name for name, p in net.named_parameters() if p.requires_grad}


def _compare(mine: set[str], expected: set[str], start: str, everything: int) -> None:
    if len(mine) == everything and len(expected) < everything:
        raise Wrong(f"starting from {start}, every parameter is still trainable: nothing was frozen (an "
                    "untouched function, a misspelt `requires_grad` and a flag set on the module all do that)")
    extra, missing = sorted(mine - expected), sorted(expected - mine)
    if extra:
        raise Wrong(f"starting from {start}, {len(extra)} tensors that should be frozen are trainable, "
                    f"e.g. {extra[0]!r}")
    if missing:
        raise Wrong(f"starting from {start}, {len(missing)} tensors that should train are frozen, e.g. "
                    f"{missing[0]!r}: set requires_grad = True on those, not only False on the others")


def _bn_only(train_bn_only, model) -> str:
    for start, net in _copies(model).items():
        train_bn_only(net)
        expected = {f"{module_name}.{name}" for module_name, module in net.named_modules()
                    if isinstance(module, nn.modules.batchnorm._BatchNorm)
                    for name, _ in module.named_parameters(recurse=False)}
        _compare(_trainable(net), expected, start, len(list(net.parameters())))
    layers = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    numbers = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return f"only the weight and bias of the {layers} BatchNorm layers train ({numbers:,} numbers)"


q1 = Exercise("BatchNorm only", _bn_only, names=("train_bn_only", "model"),
              hint="walk the modules (model.modules()); a module's own parameters are module.parameters(recurse=False), "
                   "and isinstance tells a BatchNorm layer. Starting from a frozen model, the BatchNorm parameters "
                   "must be switched on, not only the others off.")


def _prefixes(model: nn.Module) -> list[str]:
    """Module names to test: one whose name is the start of another's (``features.1`` / ``features.14``)
    when the model has one, and the last top-level child."""
    names = [name for name, _ in model.named_modules() if name]
    tricky = next((n for n in names if any(m.startswith(n) and not m.startswith(n + ".") and m != n
                                           for m in names)), None)
    last = list(dict(model.named_children()))[-1]
    return [name for name in (tricky, last) if name]


def _freeze_all_but(freeze_all_but, model) -> str:
    for prefix in _prefixes(model):
        for start, net in _copies(model).items():
            returned = freeze_all_but(net, prefix)
            expected = {name for name, _ in net.named_parameters() if name.startswith(prefix + ".")}
            mine = _trainable(net)
            extra = sorted(mine - expected)
            if extra and all(name.startswith(prefix) for name in extra):
                raise Wrong(f"freeze_all_but(model, {prefix!r}) also leaves another module trainable, e.g. "
                            f"{extra[0]!r}: which names start with {prefix!r}?")
            _compare(mine, expected, start, len(list(net.parameters())))
            numbers = sum(p.numel() for p in net.parameters() if p.requires_grad)
            if returned != numbers:
                raise Wrong(f"freeze_all_but(model, {prefix!r}) returned {returned!r}; return how many numbers "
                            "are trainable afterwards (p.numel() summed)")
    net = copy.deepcopy(model)
    try:
        freeze_all_but(net, "no_such_block")
    except KeyError:
        pass
    else:
        raise Wrong("freeze_all_but(model, 'no_such_block') raised nothing: a misspelt name must raise a "
                    "KeyError instead of freezing everything")
    return f"right on {', '.join(map(repr, _prefixes(model)))}, and a misspelt name raises a KeyError"


q2 = Exercise("freeze all but one module", _freeze_all_but, names=("freeze_all_but", "model"),
              hint="named_parameters() gives dotted names such as 'features.14.conv.0.weight', which start with "
                   "their module's name; but 'features.14...' also starts with 'features.1'. Count the matching "
                   "parameters: none means the name was wrong.")

register(globals())
