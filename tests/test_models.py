"""tlhelpers.models: load with weights and transforms; find/replace the head of every torchvision
classifier; named layer groups.

Whole-zoo tests build each model on the meta device (shapes, no memory, no weights), so all
80-odd architectures are checked in seconds, forward pass included.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from tlhelpers import assets, models

ALL_MODELS = models.classification_models()
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967

#: Where each family keeps its head: (name prefix, qualified name of the head, layer type).
EXPECTED_HEADS = [
    ("squeezenet", "classifier.1", nn.Conv2d),
    ("alexnet", "classifier.6", nn.Linear),
    ("vgg", "classifier.6", nn.Linear),
    ("resnet", "fc", nn.Linear),
    ("resnext", "fc", nn.Linear),
    ("wide_resnet", "fc", nn.Linear),
    ("regnet", "fc", nn.Linear),
    ("shufflenet", "fc", nn.Linear),
    ("googlenet", "fc", nn.Linear),
    ("inception", "fc", nn.Linear),
    ("densenet", "classifier", nn.Linear),
    ("efficientnet", "classifier.1", nn.Linear),
    ("mnasnet", "classifier.1", nn.Linear),
    ("mobilenet_v2", "classifier.1", nn.Linear),
    ("mobilenet_v3", "classifier.3", nn.Linear),
    ("convnext", "classifier.2", nn.Linear),
    ("maxvit", "classifier.5", nn.Linear),
    ("vit", "heads.head", nn.Linear),
    ("swin", "head", nn.Linear),
]
#: One (small) member of each family also runs a forward pass on meta after replace_head; the
#: rest of a family shares its head code. (A forward for all of them would add ~8 s.)
FORWARD_CHECKED = {
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet",
    "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf",
    "regnet_y_400mf", "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t",
    "swin_v2_t", "vgg11_bn", "vit_b_32", "wide_resnet50_2",
}
AUX_LAYERS = {"googlenet": ["aux1.fc2", "aux2.fc2"], "inception_v3": ["AuxLogits.fc"]}


def expected_head(name: str):
    for prefix, head, kind in EXPECTED_HEADS:
        if name.startswith(prefix):
            return head, kind
    pytest.fail(f"torchvision has a new classifier {name!r}: add its head to EXPECTED_HEADS")


def input_size(name: str) -> int:
    return 299 if name == "inception_v3" else 224


def parameter_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def assert_groups_partition_parameters(model: nn.Module) -> None:
    """Every parameter in exactly one group, and every group holds at least one parameter."""
    groups = models.layer_groups(model)
    owners = {n: [] for n in parameter_names(model)}
    for group, prefixes in groups.items():
        members = [n for n in owners if any(n == p or n.startswith(p + ".") for p in prefixes)]
        assert members, f"group {group} ({prefixes}) holds no parameter"
        for n in members:
            owners[n].append(group)
    wrong = {n: g for n, g in owners.items() if len(g) != 1}
    assert not wrong, f"parameters not in exactly one group: {dict(list(wrong.items())[:5])}"


# --------------------------------------------------------------------------- load_model

def test_load_model_returns_the_pretrained_model_and_its_transforms(
        torch_home_with_mobilenet, pretrained_mobilenet_v2, sample_photos):
    model, preprocess = models.load_model("mobilenet_v2", "IMAGENET1K_V1")
    assert isinstance(model, torchvision.models.MobileNetV2)
    real = pretrained_mobilenet_v2.state_dict()
    for name, loaded in model.state_dict().items():
        assert torch.equal(loaded, real[name]), name
    assert preprocess.crop_size == [224] and preprocess.resize_size == [256]

    model.eval()
    with torch.inference_mode():
        batch = torch.stack([preprocess(sample_photos["chelsea"]), preprocess(sample_photos["coffee"])])
        assert batch.shape == (2, 3, 224, 224)
        top5 = model(batch).topk(5).indices
    assert top5[0, 0].item() in CAT_CLASSES, top5[0].tolist()  # chelsea is a cat
    assert top5[1, 0].item() == ESPRESSO, top5[1].tolist()


def test_default_falls_back_to_the_cached_v1_weights_with_a_warning(
        torch_home_with_mobilenet, pretrained_mobilenet_v2, files_under):
    assert torchvision.models.MobileNet_V2_Weights.DEFAULT.name == "IMAGENET1K_V2"  # not cached
    expected = "DEFAULT weights .*IMAGENET1K_V2.* using the cached .*IMAGENET1K_V1"
    with pytest.warns(UserWarning, match=expected):
        model, preprocess = models.load_model("mobilenet_v2")
    assert torch.equal(model.classifier[1].weight, pretrained_mobilenet_v2.classifier[1].weight)
    assert preprocess.resize_size == [256]  # V1's preprocessing (V2 resizes to 232)
    assert files_under(torch_home_with_mobilenet) == [assets.MOBILENET_V2_FILE]


def test_named_weights_do_not_fall_back(torch_home_with_mobilenet, recwarn):
    with pytest.raises(assets.AssetError, match="mobilenet_v2-7ebf99e0.pth"):
        models.load_model("mobilenet_v2", "IMAGENET1K_V2")
    assert not [w for w in recwarn if "using the cached" in str(w.message)]


def test_weights_none_needs_no_file_and_keeps_the_default_preprocessing(isolated_torch_home, files_under):
    model, preprocess = models.load_model("squeezenet1_1", weights=None)
    assert isinstance(model, torchvision.models.SqueezeNet)
    assert preprocess.crop_size == [224]
    assert files_under(isolated_torch_home) == []


@pytest.mark.parametrize("name, weights, expected", [
    ("resnet19", "DEFAULT", "Unknown model 'resnet19'. Choose one of: alexnet"),
    ("resnet19", None, "Unknown model 'resnet19'"),
    ("resnet18", "IMAGENET1K_V9",
     "resnet18 has no weights 'IMAGENET1K_V9'; choose one of ['DEFAULT', 'IMAGENET1K_V1']"),
    ("resnet18", "imagenet", "choose one of ['DEFAULT', 'IMAGENET1K_V1']"),
    ("resnet18", torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1, "ResNet18_Weights"),
])
def test_unknown_model_or_weights_name_is_a_clear_error(name, weights, expected, isolated_torch_home,
                                                         files_under):
    with pytest.raises(ValueError) as caught:
        models.load_model(name, weights)
    assert expected in str(caught.value)
    assert files_under(isolated_torch_home) == []  # nothing fetched for a request that cannot work


# --------------------------------------------------------------------------- every torchvision classifier

@pytest.mark.filterwarnings("ignore:The default weight initialization")
@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_classifier_head_and_groups(name, build_on_meta):
    """find_head names the right layer, replace_head swaps it (and aux heads), groups partition."""
    model = build_on_meta(name).eval()
    assert_groups_partition_parameters(model)
    head_name, kind = expected_head(name)

    found_name, head = models.find_head(model)
    assert (found_name, type(head)) == (head_name, kind)
    assert model.get_submodule(found_name) is head
    assert (head.out_features if kind is nn.Linear else head.out_channels) == 1000

    new = models.replace_head(model, 7)
    assert model.get_submodule(head_name) is new and type(new) is kind
    assert new.weight.device.type == "meta" and new.weight.requires_grad
    for aux in AUX_LAYERS.get(name, []):
        assert model.get_submodule(aux).out_features == 7, aux
    assert_groups_partition_parameters(model)
    if name in FORWARD_CHECKED:
        # The replaced layer really is the one that scores: the model now outputs 7 classes.
        size = input_size(name)
        assert model(torch.empty(2, 3, size, size, device="meta")).shape == (2, 7)


@pytest.mark.filterwarnings("ignore:The default weight initialization")
@pytest.mark.parametrize("name", sorted(AUX_LAYERS))
def test_auxiliary_heads_are_replaced_and_train(name, build_on_meta):
    model = build_on_meta(name).train()
    models.replace_head(model, 5)
    size = input_size(name)
    outputs = model(torch.empty(2, 3, size, size, device="meta"))
    assert outputs.logits.shape == (2, 5)
    aux = [outputs.aux_logits] if name == "inception_v3" else [outputs.aux_logits1, outputs.aux_logits2]
    assert [a.shape for a in aux] == [(2, 5)] * len(aux)


@pytest.mark.parametrize("device", ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else []))
def test_replace_head_keeps_input_size_device_and_dtype(device, resnet18):
    model = resnet18.to(device=device, dtype=torch.float64)
    for p in model.parameters():
        p.requires_grad_(False)
    new = models.replace_head(model, 3)
    assert model.fc is new
    assert (new.in_features, new.out_features) == (512, 3)
    assert new.weight.dtype == torch.float64 and new.weight.device.type == device
    assert new.weight.requires_grad and new.bias.requires_grad  # trainable in a frozen model
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64, device=device)
    assert model(images).shape == (2, 3)


def test_replace_head_on_a_real_pretrained_model_keeps_the_backbone(mobilenet_v2, pretrained_mobilenet_v2):
    models.replace_head(mobilenet_v2, np.int64(10))  # numpy integers are integers too
    assert mobilenet_v2.classifier[1].out_features == 10
    features = dict(mobilenet_v2.features.named_parameters())
    for name, p in pretrained_mobilenet_v2.features.named_parameters():
        assert torch.equal(features[name], p), name
    assert models.head_features(mobilenet_v2) == 1280


@pytest.mark.parametrize("bad", [0, -3, 2.0, "10", True, None])
def test_bad_num_classes_is_refused_and_the_model_is_unchanged(bad, resnet18):
    head = resnet18.fc
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    with pytest.raises(ValueError, match=f"num_classes must be a positive integer.*got {bad!r}"):
        models.replace_head(resnet18, bad)
    assert resnet18.fc is head
    after = resnet18.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("make, children", [
    (lambda: _headless_resnet18(), "fc: Identity"),
    (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)), "0: Conv2d"),
])
def test_a_model_without_a_recognisable_head_is_a_clear_error(make, children):
    model = make()
    before = [n for n, _ in model.named_modules()]
    with pytest.raises(models.HeadNotFoundError) as caught:
        models.find_head(model)
    message = str(caught.value)
    assert f"No classification head found in {type(model).__name__}" in message
    assert children in message and "nn.Linear(in_features, classes)" in message
    with pytest.raises(models.HeadNotFoundError):
        models.replace_head(model, 3)
    assert [n for n, _ in model.named_modules()] == before


def _headless_resnet18() -> nn.Module:
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    return model


def test_a_plain_sequential_ending_in_linear_has_a_head():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))
    assert models.find_head(model) == ("3", model[3])
    models.replace_head(model, 2)
    assert model(torch.randn(5, 3, 2, 2)).shape == (5, 2)
    assert models.layer_groups(model) == {"1": ["1"], "3": ["3"]}


# --------------------------------------------------------------------------- layer groups

def test_resnet18_groups(resnet18):
    groups = models.layer_groups(resnet18)
    assert list(groups) == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert groups["stem"] == ["conv1", "bn1"]
    assert_groups_partition_parameters(resnet18)


def test_mobilenet_v2_groups_follow_the_resolution(mobilenet_v2):
    groups = models.layer_groups(mobilenet_v2)
    assert list(groups) == ["stem", "stage1", "stage2", "stage3", "stage4", "stage5",
                            "head_conv", "classifier"]
    assert_groups_partition_parameters(mobilenet_v2)

    sizes = {}
    def record(name):
        return lambda module, inputs, output: sizes.__setitem__(name, output.shape[-1])

    hooks = [block.register_forward_hook(record(f"features.{k}"))
             for k, block in enumerate(mobilenet_v2.features)]
    with torch.no_grad():
        mobilenet_v2(torch.zeros(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    stage_sizes = []
    for group in [g for g in groups if g.startswith("stage")]:
        resolutions = {sizes[block] for block in groups[group]}
        assert len(resolutions) == 1, f"{group} mixes resolutions {resolutions}"
        stage_sizes.append(resolutions.pop())
    assert stage_sizes == [32, 16, 8, 4, 2]  # each stage halves the resolution (64 px input)


def test_vit_class_token_has_a_group(build_on_meta):
    model = build_on_meta("vit_b_16")
    assert "class_token" in models.layer_groups(model)
    assert_groups_partition_parameters(model)


def test_count_parameters_and_fingerprint(resnet18):
    total = sum(p.numel() for p in resnet18.parameters())
    assert models.count_parameters(resnet18) == total == 11_689_512
    resnet18.fc.requires_grad_(False)
    assert models.count_parameters(resnet18, trainable_only=True) == total - 513_000
    models.replace_head(resnet18, 4)
    fingerprint = models.fingerprint(resnet18)
    assert fingerprint["class"] == "ResNet" and fingerprint["num_classes"] == 4
    assert fingerprint["shapes"]["fc.weight"] == (4, 512)


@pytest.mark.parametrize("name, groups", [
    ("mobilenet_v2", ["stem", "stage1", "stage4", "stage5", "head_conv", "classifier"]),
    ("resnet18", ["stem", "layer1", "layer3", "layer4", "fc"]),
])
def test_split_at_gives_the_model_back_in_two_parts(name, groups):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        for group in groups:
            bottom, top = models.split_at(model, group)
            torch.testing.assert_close(top(bottom(x)), expected, msg=group)
            shared = {id(p) for p in bottom.parameters()} | {id(p) for p in top.parameters()}
            assert shared == {id(p) for p in model.parameters()}, "the parts share the model's modules"
            assert not {id(p) for p in bottom.parameters()} & {id(p) for p in top.parameters()}


def test_split_at_refuses_what_it_does_not_know(build_on_meta):
    with pytest.raises(KeyError, match="No group 'layer9'"):
        models.split_at(torchvision.models.resnet18(), "layer9")
    with pytest.raises(NotImplementedError, match="run the whole model instead"):
        models.split_at(build_on_meta("vgg11"), "features")
