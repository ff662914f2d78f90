"""Exercise checks for 06 · `eval()` and `no_grad()`.

Each check builds a small network with BatchNorm and Dropout (the two layers that read
``.training``), calls the learner's function on it, and compares with what eval mode and
autograd's own flags say, so nothing is a stored number.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tlhelpers.exercises import Exercise, Wrong, register


def _small_network(seed: int = 0) -> nn.Sequential:
    """Linear, BatchNorm, ReLU, Dropout, Linear, with running statistics that are not the defaults."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
        net.train()
        with torch.no_grad():
            for _ in range(5):
                net(torch.randn(32, 6, generator=generator) * 2 + 1)
    return net.eval()


def _running(net: nn.Module) -> torch.Tensor:
    return torch.cat([m.running_mean.clone() for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)])


def _modes(net: nn.Module) -> dict[str, bool]:
    return {name or "(model)": module.training for name, module in net.named_modules()}


def _watch_autograd(net: nn.Module) -> list[bool]:
    """Record, at every forward pass of ``net``, whether autograd was recording."""
    recorded: list[bool] = []
    net.register_forward_hook(lambda module, inputs, output: recorded.append(torch.is_grad_enabled()))
    return recorded


def _mc_dropout(mc_dropout) -> str:
    net = _small_network()
    net.train()                          # the function must put the model in eval mode itself
    stats = _running(net)
    grads = _watch_autograd(net)
    image = torch.randn(1, 6, generator=torch.Generator().manual_seed(1))
    runs = mc_dropout(net, image, 10)
    if runs is None:
        raise Wrong("mc_dropout returned None: `return` the probabilities of the runs")
    if not isinstance(runs, torch.Tensor):
        raise Wrong(f"mc_dropout returned a {type(runs).__name__}; return one tensor, a row per run")
    if tuple(runs.shape) != (10, 3):
        raise Wrong(f"for 10 runs of a 3-class model it returned shape {tuple(runs.shape)}: one row per run, "
                    "one column per class")
    if not torch.equal(_running(net), stats):
        raise Wrong("BatchNorm's running statistics moved: BatchNorm ran in train mode. Only the Dropout layers "
                    "may be in train mode")
    if any(grads):
        raise Wrong("autograd recorded the forward passes: run them under torch.inference_mode()")
    if any(module.training for module in net.modules()):
        on = [name for name, training in _modes(net).items() if training]
        raise Wrong(f"the model came back with {on} in train mode: put it back in eval mode at the end")
    if not torch.allclose(runs.sum(dim=1), torch.ones(10), atol=1e-4) or (runs < 0).any():
        raise Wrong("the rows are not probabilities: apply softmax over the classes (dim=1)")
    if torch.allclose(runs, runs[:1].expand_as(runs)):
        raise Wrong("all 10 runs gave the same probabilities: the Dropout layers were not in train mode")
    with torch.inference_mode():
        eval_probabilities = net(image).softmax(dim=1)[0]
    top = int(eval_probabilities.argmax())
    return (f"on the check's own small 3-class network, 10 runs with only Dropout on: the eval-mode top class "
            f"got {runs[:, top].min():.2f} to {runs[:, top].max():.2f} (eval mode: {eval_probabilities[top]:.2f}); BatchNorm untouched, no graph, "
            "the model back in eval mode")


q1 = Exercise("Monte Carlo dropout", _mc_dropout, names=("mc_dropout",),
              hint="start from net.eval(), then walk net.modules() and call .train() on each nn.Dropout; "
                   "stack the softmax of each run; end with net.eval().")


def _predict_top1(predict_top1) -> str:
    net = _small_network(seed=2)
    net.train()
    net[1].eval()                         # a frozen BatchNorm kept in eval, as training.fit does
    modes, stats = _modes(net), _running(net)
    images = torch.randn(8, 6, generator=torch.Generator().manual_seed(3))
    reference = copy.deepcopy(net).eval()
    with torch.inference_mode():
        expected = reference(images).argmax(dim=1)
    grads = _watch_autograd(net)
    answers = [predict_top1(net, images) for _ in range(2)]
    if answers[0] is None:
        raise Wrong("predict_top1 returned None: `return` the top-1 class index of each image")
    try:
        answers = [torch.as_tensor(answer).reshape(-1) for answer in answers]
    except (TypeError, ValueError, RuntimeError):
        raise Wrong(f"predict_top1 returned a {type(answers[0]).__name__}; return the class indices") from None
    if answers[0].numel() != len(images):
        raise Wrong(f"{answers[0].numel()} answers for {len(images)} images: one top-1 class index per image "
                    "(argmax over the classes)")
    if not torch.equal(_running(net), stats):
        raise Wrong("BatchNorm's running statistics moved: the forward pass ran in train mode")
    if not torch.equal(answers[0], answers[1]):
        raise Wrong("two calls on the same images gave different answers: Dropout was still in train mode")
    if not torch.equal(answers[0].long(), expected):
        raise Wrong("the answers differ from the model's eval-mode top-1: predict with every layer in eval "
                    "mode, and take the argmax over the classes (dim=1)")
    if any(grads):
        raise Wrong("autograd recorded the forward pass: run it under torch.inference_mode()")
    changed = [name for name, training in _modes(net).items() if training != modes[name]]
    if changed:
        raise Wrong(f"the model came back with other modes than it had (changed: {changed}): record each "
                    "submodule's .training before, and restore each one after")
    return ("eval-mode answers on 8 inputs, the same twice, no graph, and every submodule back in its own mode "
            "(the model in train, its BatchNorm in eval)")


q2 = Exercise("predict and restore the modes", _predict_top1, names=("predict_top1",),
              hint="record each module's .training (named_modules()) before; eval() and torch.inference_mode() "
                   "for the forward pass; then set each module's .training back (a try/finally keeps that true "
                   "even if the forward pass fails).")

register(globals())
