"""08's exercise checks on a small real top (a convolution block with BatchNorm, pooling, a
Dropout + Linear head, as MobileNetV2's top is built): a placeholder, wrong answers and a crash
say "Not yet" with a hint and never raise; right answers say "Right"; the learner's models stay
as they were."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tlhelpers import exercises
from tlhelpers.exercises import nb08


@pytest.fixture(autouse=True)
def fresh_history():
    exercises.HISTORY.clear()
    yield
    exercises.HISTORY.clear()


def small_top(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    top = nn.Sequential(nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.ReLU()), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 3)))
    top[0][1].running_mean.uniform_(-1, 1)
    top[0][1].running_var.uniform_(0.5, 2)
    return top


def right_groups(net, lr):
    head = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    mine = {id(p) for p in head.parameters()}
    return [{"params": list(head.parameters()), "lr": lr},
            {"params": [p for p in net.parameters() if id(p) not in mine], "lr": lr / 10}]


def right_mix(a, b, alpha):
    mixed = copy.deepcopy(a)
    other = b.state_dict()
    with torch.no_grad():
        for name, tensor in mixed.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_((1 - alpha) * tensor + alpha * other[name])
    return mixed


def test_placeholders_and_untouched_scaffolds_say_not_yet():
    def lp_ft_groups(net, lr):
        ...

    def mix(a, b, alpha):
        ...

    for feedback in (nb08.q1(lp_ft_groups=..., net=small_top(0)), nb08.q2(mix=..., a=small_top(0), b=small_top(1))):
        assert not feedback and "still `...`" in str(feedback) and "Hint:" in str(feedback)
    feedback = nb08.q1(lp_ft_groups=lp_ft_groups, net=small_top(0))
    assert not feedback and "returned None" in feedback.message
    feedback = nb08.q2(mix=mix, a=small_top(0), b=small_top(1))
    assert not feedback and "returned None" in feedback.message


@pytest.mark.parametrize("groups, says", [
    (lambda net, lr: [{"params": list(net.parameters()), "lr": lr}], "outside the head"),
    (lambda net, lr: [{"params": list(net[-1].parameters()), "lr": lr}], "in no group"),
    (lambda net, lr: [{"params": list(net[-1].parameters()), "lr": lr},
                      {"params": list(net.parameters()), "lr": lr / 10}], "two groups"),
    (lambda net, lr: [{"params": list(net[-1].parameters()), "lr": lr},
                      {"params": list(net[0].parameters()), "lr_scale": 0.1}], "lr_scale"),
    (lambda net, lr: [{"params": list(net[-1].parameters()), "lr": lr / 10},
                      {"params": list(net[0].parameters()), "lr": lr}], "read the question again"),
    (lambda net, lr: 1 / 0, "ZeroDivisionError"),
])
def test_wrong_groups_say_what_is_wrong(groups, says):
    feedback = nb08.q1(lp_ft_groups=groups, net=small_top(0))
    assert not feedback and says in feedback.message, feedback.message


def test_right_groups_and_the_net_is_left_alone():
    net = small_top(0)
    before = copy.deepcopy(net.state_dict())
    feedback = nb08.q1(lp_ft_groups=right_groups, net=net)
    assert feedback and str(feedback).startswith("Right.")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def lerp_parameters_only(a, b, alpha):
    mixed = copy.deepcopy(a)
    with torch.no_grad():
        for (_, p), (_, q) in zip(mixed.named_parameters(), b.named_parameters(), strict=False):
            p.copy_((1 - alpha) * p + alpha * q)
    return mixed


def in_place(a, b, alpha):
    with torch.no_grad():
        for p, q in zip(a.parameters(), b.parameters(), strict=False):
            p.mul_(1 - alpha).add_(alpha * q)
    return copy.deepcopy(a)


@pytest.mark.parametrize("mix, says", [
    (lambda a, b, alpha: a, "one of its inputs"),
    (lambda a, b, alpha: copy.deepcopy(b), "is not (1 - alpha)"),
    (lambda a, b, alpha: right_mix(a, b, 1 - alpha), "is not (1 - alpha)"),
    (lerp_parameters_only, "running statistics"),
    (in_place, "changed"),
    (lambda a, b, alpha: a.state_dict(), "not a model"),
])
def test_wrong_mixes_say_what_is_wrong(mix, says):
    feedback = nb08.q2(mix=mix, a=small_top(0), b=small_top(1))
    assert not feedback and says in feedback.message, feedback.message


def test_right_mix_and_verify():
    a, b = small_top(0), small_top(1)
    assert not nb08.q1(lp_ft_groups=..., net=a)
    assert not nb08.q2(mix=..., a=a, b=b)
    assert nb08.q1(lp_ft_groups=right_groups, net=a)
    feedback = nb08.q2(mix=right_mix, a=a, b=b)
    assert feedback and str(feedback).startswith("Right.")
    assert "every exercise" in exercises.verify("nb08")
