"""tlhelpers.freezing: freeze by name/prefix/group, honest summaries, frozen BatchNorm, and the
optimizer traps, each shown with a real model."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

from tlhelpers import freezing, models
from tlhelpers.freezing import OptimizerMismatchWarning


def frozen(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def under(model: nn.Module, *prefixes: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if any(n.startswith(p + ".") or n == p for p in prefixes)}


def numel(model: nn.Module, names: set[str]) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n in names)


# --------------------------------------------------------------------------- freeze / unfreeze

@pytest.mark.parametrize("names, prefixes", [
    (("layer1",), ("layer1",)),                           # a group that is also a module
    (("stem",), ("conv1", "bn1")),                        # a group of several modules
    (("layer4.1",), ("layer4.1",)),                       # a module prefix
    (("layer4.1.conv2",), ("layer4.1.conv2",)),           # a deeper module
    (("fc.weight",), ("fc.weight",)),                     # a single parameter
    (("stem", "layer2", "layer2.0"), ("conv1", "bn1", "layer2")),  # overlaps count once
])
def test_freeze_and_unfreeze_by_group_module_or_prefix(names, prefixes, resnet18):
    expected = under(resnet18, *prefixes)
    assert expected  # the selection is not empty

    count = freezing.freeze(resnet18, *names)
    assert frozen(resnet18) == expected
    assert count == numel(resnet18, expected)

    freezing.freeze(resnet18)  # no names: everything
    assert trainable(resnet18) == set()
    assert freezing.unfreeze(resnet18, *names) == count
    assert trainable(resnet18) == expected
    freezing.unfreeze(resnet18)
    assert frozen(resnet18) == set()


def test_a_prefix_matches_whole_names_only():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(11)])
    freezing.freeze(model, "1")
    assert frozen(model) == {"1.weight", "1.bias"}  # not "10.weight"


def test_mobilenet_groups_freeze_by_name(mobilenet_v2):
    groups = models.layer_groups(mobilenet_v2)
    freezing.freeze(mobilenet_v2, "stem", "stage1", "stage2")
    assert frozen(mobilenet_v2) == under(mobilenet_v2, *groups["stem"], *groups["stage1"], *groups["stage2"])


@pytest.mark.parametrize("action", ["freeze", "unfreeze"])
def test_an_unknown_name_changes_nothing_and_lists_the_valid_groups(action, resnet18):
    if action == "unfreeze":
        freezing.freeze(resnet18)
    before = {n: p.requires_grad for n, p in resnet18.named_parameters()}

    with pytest.raises(KeyError) as caught:
        getattr(freezing, action)(resnet18, "layer1", "layer9", "stem")  # one bad among good ones
    message = str(caught.value)
    assert "'layer9'" in message and "'layer1'" not in message
    assert "Groups: stem, layer1, layer2, layer3, layer4, fc." in message
    assert "Top-level modules: conv1, bn1, relu, maxpool, layer1" in message
    assert "nothing was changed" in message
    assert {n: p.requires_grad for n, p in resnet18.named_parameters()} == before


def test_a_name_without_parameters_is_unknown(resnet18):
    with pytest.raises(KeyError, match="'relu'"):
        freezing.freeze(resnet18, "relu")
    assert frozen(resnet18) == set()


# --------------------------------------------------------------------------- freeze_backbone

def test_freeze_backbone_leaves_only_the_head_trainable(mobilenet_v2):
    left = freezing.freeze_backbone(mobilenet_v2)
    assert trainable(mobilenet_v2) == {"classifier.1.weight", "classifier.1.bias"}
    assert left == 1280 * 1000 + 1000


@pytest.mark.filterwarnings("ignore:The default weight initialization")
def test_freeze_backbone_keeps_auxiliary_heads_trainable(build_on_meta):
    model = build_on_meta("googlenet")
    freezing.freeze_backbone(model)
    assert trainable(model) == under(model, "fc", "aux1", "aux2")


def test_freeze_backbone_then_replace_head(resnet18):
    freezing.freeze_backbone(resnet18)
    models.replace_head(resnet18, 5)
    assert trainable(resnet18) == {"fc.weight", "fc.bias"}


def test_freeze_backbone_without_a_head_changes_nothing(resnet18):
    resnet18.fc = nn.Identity()
    with pytest.raises(models.HeadNotFoundError):
        freezing.freeze_backbone(resnet18)
    assert frozen(resnet18) == set()


# --------------------------------------------------------------------------- trainable_summary

def test_trainable_summary_matches_independent_counts(resnet18):
    freezing.freeze(resnet18, "stem", "layer1", "layer2")
    summary = freezing.trainable_summary(resnet18)

    assert [row.group for row in summary.rows] == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
    modules = {"stem": ["conv1", "bn1"], "layer1": ["layer1"], "layer2": ["layer2"],
               "layer3": ["layer3"], "layer4": ["layer4"], "fc": ["fc"]}
    for group, names in modules.items():
        params = [p for name in names for p in resnet18.get_submodule(name).parameters()]
        assert summary[group].parameters == sum(p.numel() for p in params), group
        assert summary[group].trainable == sum(p.numel() for p in params if p.requires_grad), group
    assert summary["layer2"].share == 0.0 and summary["layer4"].share == 1.0
    assert summary.parameters == sum(p.numel() for p in resnet18.parameters()) == 11_689_512
    assert summary.trainable == sum(p.numel() for p in resnet18.parameters() if p.requires_grad)
    assert summary.share == pytest.approx(summary.trainable / summary.parameters)

    text = str(summary)
    assert text.splitlines()[0].split() == ["group", "parameters", "trainable", "share"]
    assert f"{summary.trainable:,}" in text.splitlines()[-1] and text.splitlines()[-1].startswith("total")
    assert summary._repr_html_().count("<tr>") == 1 + 6 + 1
    with pytest.raises(KeyError, match="groups: stem, layer1"):
        summary["layer5"]


def test_trainable_summary_after_freeze_backbone(mobilenet_v2):
    freezing.freeze_backbone(mobilenet_v2)
    summary = freezing.trainable_summary(mobilenet_v2)
    assert summary.trainable == summary["classifier"].trainable == 1_281_000
    assert summary.parameters == 3_504_872


# --------------------------------------------------------------------------- BatchNorm policy

def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if "running_" in n}


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    after = dict(model.named_buffers())
    return {n.rsplit(".", 1)[0] for n, b in before.items() if not torch.equal(b, after[n])}


@pytest.mark.parametrize("policy", [True, False])
def test_frozen_bn_eval_keeps_frozen_running_stats(policy, mobilenet_v2, sample_photos):
    freezing.freeze(mobilenet_v2, "stem", "stage1", "stage2", "stage3", "stage4")
    frozen_bn = {n for n, m in mobilenet_v2.named_modules()
                 if isinstance(m, nn.BatchNorm2d) and not m.weight.requires_grad}
    trainable_bn = {n for n, m in mobilenet_v2.named_modules()
                    if isinstance(m, nn.BatchNorm2d) and m.weight.requires_grad}
    assert frozen_bn and trainable_bn

    mobilenet_v2.train()
    switched = freezing.frozen_bn_eval(mobilenet_v2) if policy else []
    before = _bn_stats(mobilenet_v2)
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    preprocess = weights.transforms(crop_size=64, resize_size=64)
    batch = torch.stack([preprocess(photo) for photo in sample_photos.values()])
    with torch.no_grad():
        mobilenet_v2(batch)
    changed = _changed(before, mobilenet_v2)

    assert trainable_bn <= changed  # layers that train keep learning their statistics
    if policy:
        assert set(switched) == frozen_bn
        assert not changed & frozen_bn  # the frozen ones kept the pretrained statistics
    else:
        assert frozen_bn <= changed  # the trap: "frozen" BatchNorm drifts in train mode


# --------------------------------------------------------------------------- optimizer checks

def test_check_optimizer_warns_about_frozen_parameters_it_holds(resnet18):
    optimizer = torch.optim.SGD(resnet18.parameters(), lr=0.1)
    freezing.freeze_backbone(resnet18)
    with pytest.warns(OptimizerMismatchWarning, match="holds 60 frozen parameter tensors") as record:
        held, missed = freezing.check_optimizer(optimizer, resnet18)
    assert "set_to_none=False" in str(record[0].message)
    assert set(held) == frozen(resnet18) and missed == []


def test_check_optimizer_warns_about_trainable_parameters_it_misses(resnet18):
    freezing.freeze_backbone(resnet18)
    optimizer = torch.optim.SGD([p for p in resnet18.parameters() if p.requires_grad], lr=0.1)
    freezing.unfreeze(resnet18, "layer4")
    with pytest.warns(OptimizerMismatchWarning, match="misses 15 trainable parameter tensors .*Rebuild"):
        held, missed = freezing.check_optimizer(optimizer, resnet18)
    assert held == [] and set(missed) == under(resnet18, "layer4")


def test_check_optimizer_is_silent_when_it_matches(resnet18):
    freezing.freeze(resnet18, "stem", "layer1")
    optimizer = torch.optim.AdamW([{"params": resnet18.fc.parameters(), "lr": 1e-3},
                                   {"params": [p for n, p in resnet18.named_parameters()
                                               if p.requires_grad and not n.startswith("fc.")]}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert freezing.check_optimizer(optimizer, resnet18) == ([], [])
    freezing.freeze(resnet18, "layer2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        held, missed = freezing.check_optimizer(optimizer, resnet18, warn=False)
    assert set(held) == under(resnet18, "layer2")


@pytest.mark.parametrize("set_to_none", [False, True])
def test_stale_gradients_and_momentum_move_frozen_weights(set_to_none, resnet18):
    """Freeze after building the optimizer: with zero_grad(set_to_none=False) SGD momentum still
    moves the "frozen" weights; with set_to_none=True (the default) they stay put."""
    torch.manual_seed(0)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 1000, (4,))
    optimizer = torch.optim.SGD(resnet18.parameters(), lr=0.1, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=set_to_none)
        nn.functional.cross_entropy(resnet18(images), labels).backward()
        optimizer.step()

    step()  # everything trains once: momentum buffers now hold a velocity
    freezing.freeze_backbone(resnet18)
    with pytest.warns(OptimizerMismatchWarning):
        freezing.check_optimizer(optimizer, resnet18)
    before = {n: p.detach().clone() for n, p in resnet18.named_parameters()}
    step()
    moved = {n for n, p in resnet18.named_parameters() if not torch.equal(p, before[n])}

    assert {"fc.weight", "fc.bias"} <= moved  # the head trains either way
    if set_to_none:
        assert moved == {"fc.weight", "fc.bias"}
        assert all(p.grad is None for n, p in resnet18.named_parameters() if not p.requires_grad)
    else:
        assert moved == set(before)  # every frozen tensor moved too
        drift = max((resnet18.get_parameter(n) - before[n]).abs().max().item() for n in frozen(resnet18))
        assert drift > 1e-4


def test_frozen_bn_eval_covers_batchnorm_without_parameters():
    """affine=False BatchNorm has no parameters to freeze; it follows the layer that feeds it.
    Before: it was never switched, so its statistics drifted in a frozen block."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.ReLU(),
                          nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, affine=False), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))  # materialise the lazy layer
    freezing.freeze(model, "0")     # the first conv frozen, the rest trainable
    model.train()
    assert freezing.frozen_bn_eval(model) == ["1"]
    frozen_bn, trained_bn = model[1], model[4]
    before = frozen_bn.running_mean.clone(), trained_bn.running_mean.clone()
    model(torch.randn(4, 3, 8, 8) + 3)
    assert torch.equal(frozen_bn.running_mean, before[0]), "frozen block: statistics kept"
    assert not torch.equal(trained_bn.running_mean, before[1]), "trainable block: statistics follow the data"


@pytest.mark.parametrize("policy, expected_eval", [
    ("frozen-eval", "frozen only"), ("eval", "all"), ("train", "none")])
def test_set_bn_policy(policy, expected_eval, mobilenet_v2):
    freezing.freeze_backbone(mobilenet_v2)
    freezing.unfreeze(mobilenet_v2, "stage5")
    mobilenet_v2.train()
    switched = freezing.set_bn_policy(mobilenet_v2, policy)
    bns = {n: m for n, m in mobilenet_v2.named_modules() if isinstance(m, nn.BatchNorm2d)}
    frozen = {n for n, m in bns.items() if not m.weight.requires_grad}
    in_eval = {n for n, m in bns.items() if not m.training}
    assert set(switched) == in_eval
    assert in_eval == {"frozen only": frozen, "all": set(bns), "none": set()}[expected_eval]
    assert frozen and frozen != set(bns)


def test_an_unknown_bn_policy_is_refused(resnet18):
    resnet18.train()
    with pytest.raises(ValueError, match="'frozen-eval', 'train', 'eval'"):
        freezing.set_bn_policy(resnet18, "freeze")
    assert all(m.training for m in resnet18.modules())
