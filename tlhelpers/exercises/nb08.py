"""Exercise checks for 08 · Choosing how to fine-tune when the data shifts.

q1: param groups for LP-FT (the head at ``lr``, every other weight at ``lr / 10``), checked on a
copy of the learner's own LP-FT start. q2: WiSE-FT's weight average written by hand, checked
against :func:`tlhelpers.robust.interpolate` on the learner's own two models. Neither check
prints the answer; both leave the learner's models as they were.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tlhelpers import robust
from tlhelpers.exercises import Exercise, Wrong, close, register

#: The rate q1 calls the learner's function with (any positive rate would do).
RATE = 3e-4


def _head(net: nn.Module) -> nn.Linear:
    linears = [module for module in net.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise Wrong("the net passed to the check has no nn.Linear head: pass an LP-FT start (the top with the probe)")
    return linears[-1]


def _lp_ft_groups(lp_ft_groups, net) -> str:
    net = copy.deepcopy(net)
    groups = lp_ft_groups(net, RATE)
    if groups is None:
        raise Wrong("lp_ft_groups returned None: `return` the list of param groups")
    groups = list(groups)
    if not groups or not all(isinstance(group, dict) and "params" in group for group in groups):
        raise Wrong("return a list of dicts, each with a 'params' entry (a list of parameters) and its own 'lr'")
    if any("lr_scale" in group for group in groups):
        raise Wrong("'lr_scale' is not a torch.optim key: a plain optimizer ignores it; give each group its own 'lr'")
    if any("lr" not in group for group in groups):
        raise Wrong("a group has no 'lr' of its own, so it would train at the optimizer's default rate")
    rate_of: dict[int, float] = {}
    for group in groups:
        params = group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        for parameter in list(params):
            if id(parameter) in rate_of:
                raise Wrong("a parameter sits in two groups: each parameter belongs to exactly one")
            rate_of[id(parameter)] = group["lr"]
    parameters = list(net.parameters())
    missing = sum(id(p) not in rate_of for p in parameters)
    if missing:
        raise Wrong(f"{missing} of the net's {len(parameters)} parameter tensors are in no group: LP-FT trains the "
                    "whole top, so every parameter needs a group")
    if len(rate_of) != len(parameters):
        raise Wrong("the groups hold tensors that are not the net's parameters: use the `net` passed in")
    head = {id(p) for p in _head(net).parameters()}
    for parameter in parameters:
        wanted = RATE if id(parameter) in head else RATE / 10
        if not close(rate_of[id(parameter)], wanted):
            part = "the head's parameters" if id(parameter) in head else "the parameters outside the head"
            raise Wrong(f"{part} train at {rate_of[id(parameter)]!r} when lp_ft_groups is called with lr={RATE:g}; "
                        "read the question again for each part's rate")
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    if {round(group["lr"], 12) for group in optimizer.param_groups} != {round(RATE, 12), round(RATE / 10, 12)}:
        raise Wrong("a plain torch.optim.AdamW built from your groups does not keep both rates")
    n_head = sum(p.numel() for p in parameters if id(p) in head)
    n_rest = sum(p.numel() for p in parameters) - n_head
    return (f"the head's {n_head:,} weights at lr and the other {n_rest:,} at lr / 10, each group with its own "
            "'lr' (a plain torch.optim optimizer keeps both)")


q1 = Exercise("LP-FT with a slower body", _lp_ft_groups, names=("lp_ft_groups", "net"),
              hint="The head is the last nn.Linear in net.modules(); collect the ids of its parameters and put "
                   "every other parameter of net in a second group, each dict with its own 'lr'.")


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _same(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == snapshot.keys() and all(torch.equal(state[k], v) for k, v in snapshot.items())


def _mix(mix, a, b) -> str:
    ends = _snapshot(a), _snapshot(b)
    parameters = {name for name, _ in a.named_parameters()}
    for alpha in (0.0, 0.3, 1.0):
        mixed = mix(a, b, alpha)
        if mixed is None:
            raise Wrong("mix returned None: build the mixed model and `return` it")
        if not isinstance(mixed, nn.Module):
            raise Wrong(f"mix returned a {type(mixed).__name__}, not a model (an nn.Module)")
        if mixed is a or mixed is b:
            raise Wrong("mix returned one of its inputs: build the mix in a new model (a copy)")
        if not (_same(a, ends[0]) and _same(b, ends[1])):
            raise Wrong(f"a or b changed when mix ran at alpha={alpha:g}: work on a copy and leave both ends alone")
        state, reference = mixed.state_dict(), robust.interpolate(a, b, alpha).state_dict()
        if state.keys() != reference.keys():
            raise Wrong("the mixed model holds other tensors than a and b: start from a copy of one of them")
        for name, expected in reference.items():
            if expected.is_floating_point() and not torch.allclose(state[name].float(), expected, atol=1e-5, rtol=1e-4):
                what = ("weight" if name in parameters else
                        "buffer (BatchNorm's running statistics are in the state dict too)")
                raise Wrong(f"at alpha={alpha:g} the {what} {name} is not (1 - alpha) * a + alpha * b")
    return "every weight and buffer matches robust.interpolate at alpha 0, 0.3 and 1; both ends untouched"


q2 = Exercise("WiSE-FT by hand", _mix, names=("mix", "a", "b"),
              hint="Start from copy.deepcopy(a); its state_dict() tensors share memory with the copy, so under "
                   "torch.no_grad() you can copy_ a blend of each floating-point one and b.state_dict()[name] into it.")

register(globals())
