"""Load torchvision classifiers, find and replace their heads, and name their blocks.

Everything here works on any model from ``torchvision.models.list_models(module=torchvision.models)``
and on plain ``nn.Sequential`` stacks that end in a ``Linear`` layer (optionally followed by
parameter-free layers such as ``LogSoftmax`` or ``Softmax``).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from tlhelpers import assets
from tlhelpers.checks import integer

#: Where torchvision classifiers keep their head, most common first.
HEAD_CONTAINERS = ("fc", "classifier", "heads", "head")
#: Auxiliary classifiers (Inception v3, GoogLeNet) and the layer inside them to replace.
AUX_HEADS = {"AuxLogits": "fc", "aux1": "fc2", "aux2": "fc2"}
#: The fields of their train-mode outputs (InceptionOutputs, GoogLeNetOutputs) that hold auxiliary logits.
AUX_OUTPUTS = ("aux_logits", "aux_logits1", "aux_logits2")


def under(name: str, prefix: str) -> bool:
    """Is parameter or module ``name`` the module ``prefix`` itself or inside it?

    ``layer4.0.conv1.weight`` is under ``layer4``; ``layer40.weight`` is not. The one place the
    course decides this, for freezing, summaries, blocks and weight change.
    """
    return name == prefix or name.startswith(prefix + ".")


class HeadNotFoundError(ValueError):
    """The model has no classification head this module recognises."""


def classification_models() -> list[str]:
    """Names of every torchvision image-classification model."""
    return torchvision.models.list_models(module=torchvision.models)


def _weights_enum(name: str):
    """torchvision's weights enum for model ``name``; ValueError listing the models if unknown."""
    if name not in classification_models():
        raise ValueError(
            f"Unknown model {name!r}. Choose one of: {', '.join(classification_models())}"
        )
    return torchvision.models.get_model_weights(name)


def _resolve_weights(name: str, weights):
    enum = _weights_enum(name)
    valid = ["DEFAULT", *(member.name for member in enum)]  # iterating skips the DEFAULT alias
    if weights is None:
        return None
    if isinstance(weights, torchvision.models.WeightsEnum):
        if not isinstance(weights, enum):
            raise ValueError(f"{weights} are weights for another model; {name} takes "
                             f"{enum.__name__} (one of {valid})")
        return weights
    try:
        return enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except (KeyError, TypeError):
        raise ValueError(f"{name} has no weights {weights!r}; choose one of {valid} or None") from None


def _available(name: str, chosen, fall_back: bool):
    """Make sure ``chosen``'s file is cached; for "DEFAULT", accept another cached member.

    Offline, MobileNetV2's DEFAULT (IMAGENET1K_V2) cannot be fetched but IMAGENET1K_V1 can; a
    learner asking for "DEFAULT" gets the V1 weights with a warning that says so.
    """
    try:
        assets.ensure_weights_file(chosen.url)
        return chosen
    except assets.HashMismatchError:
        raise
    except assets.AssetError as error:
        if fall_back:
            for member in type(chosen):
                if member is not chosen and (assets.checkpoint_dir() / member.url.rsplit("/", 1)[-1]).exists():
                    assets.ensure_weights_file(member.url)
                    warnings.warn(f"{name}: DEFAULT weights ({chosen}) are not available offline; "
                                  f"using the cached {member} instead.", stacklevel=3)
                    return member
        raise error


def resolve_weights(name: str, weights: str | torchvision.models.WeightsEnum | None = "DEFAULT"):
    """The weights member :func:`load_model` uses for ``weights`` (``None`` for random ones),
    its file verified and, when missing, fetched; for ``"DEFAULT"`` offline, the cached
    member it falls back to (with a warning naming it)."""
    chosen = _resolve_weights(name, weights)
    if chosen is not None:
        chosen = _available(name, chosen, fall_back=weights == "DEFAULT")
    return chosen


def load_model(name: str, weights: str | torchvision.models.WeightsEnum | None = "DEFAULT",
               image_size: int | None = None) -> tuple[nn.Module, Callable]:
    """Build torchvision model ``name`` with pretrained ``weights`` and return (model, transforms).

    ``weights`` is ``"DEFAULT"``, an enum member name such as ``"IMAGENET1K_V1"``, a
    ``WeightsEnum`` member, or ``None`` for random initialisation. The transforms are the
    preprocessing the weights were trained with (for ``weights=None``: those of the default
    weights, so a from-scratch model sees the same inputs). The weights file is verified and,
    when missing, fetched as :mod:`tlhelpers.assets` describes; offline, a missing file raises
    :class:`tlhelpers.assets.AssetError` saying exactly which file and how to get it. For
    ``"DEFAULT"`` only, another already cached weights version of the same model is used (with
    a warning) when the default one cannot be had. ``image_size`` asks for the same
    preprocessing at another size (``weights.transforms(crop_size=s, resize_size=s)``).
    """
    chosen = resolve_weights(name, weights)
    model = torchvision.models.get_model(name, weights=chosen)
    sizes = {} if image_size is None else {"crop_size": image_size, "resize_size": image_size}
    preprocessing = (chosen or _weights_enum(name).DEFAULT).transforms(**sizes)
    return model, preprocessing


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """Return (qualified name, module) of the layer that produces the class scores.

    ResNet/RegNet/Inception/GoogLeNet ``fc``; VGG/AlexNet ``classifier.6``; MobileNet,
    EfficientNet, ConvNeXt, MaxViT: the last ``Linear`` in ``classifier``; ViT ``heads.head``;
    Swin ``head``; SqueezeNet's 1x1 convolution ``classifier.1``. Auxiliary heads are not the
    head (``replace_head`` replaces them too). Raises :class:`HeadNotFoundError` otherwise.
    """
    for container in HEAD_CONTAINERS:
        module = getattr(model, container, None)
        if module is None or not isinstance(module, nn.Module):
            continue
        found = _last_scoring_layer(module)
        if found is not None:
            inner, layer = found
            return (f"{container}.{inner}" if inner else container), layer
    if isinstance(model, nn.Sequential):
        found = _last_linear(model)
        if found is not None:
            return found
    described = ", ".join(f"{n}: {type(m).__name__}" for n, m in model.named_children()) or "none"
    raise HeadNotFoundError(
        f"No classification head found in {type(model).__name__}. Looked for a Linear layer "
        f"(or SqueezeNet's 1x1 Conv2d) in {', '.join(HEAD_CONTAINERS)}, or a Sequential ending "
        f"in Linear (plus parameter-free layers such as LogSoftmax); its top-level children are "
        f"[{described}]. If the head was removed (nn.Identity), put a layer back with "
        f"model.<name> = nn.Linear(in_features, classes)."
    )


def _last_linear(stack: nn.Sequential) -> tuple[str, nn.Module] | None:
    """The ``Linear`` that ends a plain stack, with only parameter-free layers after it.

    A plain ``nn.Sequential`` child is looked into the same way (a classifier container, as
    in the ``top`` that :func:`split_at` returns); any other layer with parameters ends the
    search (the stack is not a classifier).
    """
    for name, layer in reversed(list(stack.named_children())):
        if isinstance(layer, nn.Linear):
            return name, layer
        if type(layer) is nn.Sequential:
            inner = _last_linear(layer)
            if inner is not None:
                return f"{name}.{inner[0]}", inner[1]
        if any(True for _ in layer.parameters()):
            return None
    return None


def _last_scoring_layer(container: nn.Module) -> tuple[str, nn.Module] | None:
    if isinstance(container, nn.Linear):
        return "", container
    if not isinstance(container, nn.Sequential):
        # e.g. ViT's `heads` is a Sequential; anything else (Identity, custom) is not a head.
        return None
    for name, layer in reversed(list(container.named_children())):
        if isinstance(layer, nn.Linear):
            return name, layer
        if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1):
            return name, layer
        if isinstance(layer, nn.Sequential):
            inner = _last_scoring_layer(layer)
            if inner is not None:
                return f"{name}.{inner[0]}", inner[1]
    return None


def _new_layer_like(old: nn.Module, num_classes: int) -> nn.Module:
    kwargs = {"device": old.weight.device, "dtype": old.weight.dtype}
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **kwargs)
    return nn.Conv2d(old.in_channels, num_classes, kernel_size=1, **kwargs)


def swap_module(model: nn.Module, qualified: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the submodule named ``qualified`` (e.g. ``"classifier.1"``) is; return the old one."""
    parent_name, _, child = qualified.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the head for a freshly initialised layer with ``num_classes`` outputs; return it.

    The new layer keeps the old one's input size, device and dtype, and is trainable
    (``requires_grad=True``, as every new layer is) even when the rest of the model is frozen.
    Inception/GoogLeNet auxiliary heads get new final layers too, so training with them works.
    """
    num_classes = integer(num_classes, "num_classes", 1,
                          " (the number of classes in your dataset, e.g. len(dataset.classes))")
    name, old = find_head(model)
    new = _new_layer_like(old, num_classes)
    swap_module(model, name, new)
    for aux, layer_name in AUX_HEADS.items():
        aux_module = getattr(model, aux, None)
        if isinstance(aux_module, nn.Module) and isinstance(getattr(aux_module, layer_name, None), nn.Linear):
            setattr(aux_module, layer_name, _new_layer_like(getattr(aux_module, layer_name), num_classes))
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return new


def _mobilenet_v2_groups(model: nn.Module) -> OrderedDict[str, list[str]]:
    """stem, stage1..stage5 (one per output resolution), head_conv, classifier."""
    features = model.features
    groups: OrderedDict[str, list[str]] = OrderedDict(stem=["features.0"])
    stage = 0
    for index in range(1, len(features) - 1):
        strided = any(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in features[index].modules())
        if strided or stage == 0:
            stage += 1
            groups[f"stage{stage}"] = []
        groups[f"stage{stage}"].append(f"features.{index}")
    groups["head_conv"] = [f"features.{len(features) - 1}"]
    groups["classifier"] = ["classifier"]
    return groups


def layer_groups(model: nn.Module) -> OrderedDict[str, list[str]]:
    """Ordered blocks of the network, input to output: group name -> module names.

    ResNet: stem (conv1, bn1), layer1..layer4, fc. MobileNetV2: stem, stage1..stage5 (a new
    stage wherever the resolution halves), head_conv, classifier. Any other model: its
    top-level children that hold parameters, after one group per parameter the model holds
    directly (ViT's ``class_token``). Every parameter belongs to exactly one group.
    """
    if isinstance(model, torchvision.models.ResNet):
        return OrderedDict(stem=["conv1", "bn1"], layer1=["layer1"], layer2=["layer2"],
                           layer3=["layer3"], layer4=["layer4"], fc=["fc"])
    if isinstance(model, torchvision.models.MobileNetV2):
        return _mobilenet_v2_groups(model)
    groups: OrderedDict[str, list[str]] = OrderedDict(
        (name, [name]) for name, _ in model.named_parameters(recurse=False))
    groups.update((name, [name]) for name, child in model.named_children()
                  if any(True for _ in child.parameters()))
    return groups


#: ResNet's forward, as a chain of its children (the flatten before fc is added in split_at).
_RESNET_CHAIN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")


def split_at(model: nn.Module, group: str) -> tuple[nn.Module, nn.Module]:
    """Cut ``model`` just before layer group ``group``: ``(bottom, top)`` with top(bottom(x)) == model(x).

    Both parts share the model's modules (no copies), so training ``top`` trains the model.
    When everything in ``bottom`` is frozen and in eval mode, its output for an image never
    changes: compute it once (:func:`tlhelpers.training.cache_features` runs a model without a
    head whole) and train ``top`` on it, paying for the bottom once instead of every step.
    Supports MobileNetV2 (groups stem, stage1..stage5, head_conv, classifier) and ResNets
    (stem, layer1..layer4, fc); other models raise ``NotImplementedError``.
    """
    groups = layer_groups(model)
    if group not in groups:
        raise KeyError(f"No group {group!r}; groups: {', '.join(groups)}")
    if isinstance(model, torchvision.models.MobileNetV2):
        first = groups[group][0]
        cut = len(model.features) if first == "classifier" else int(first.split(".")[1])
        top = nn.Sequential(model.features[cut:], nn.AdaptiveAvgPool2d(1), nn.Flatten(), model.classifier)
        return model.features[:cut], top
    if isinstance(model, torchvision.models.ResNet):
        cut = {"stem": 0, "fc": len(_RESNET_CHAIN)}.get(group, _RESNET_CHAIN.index(group) if group in
                                                           _RESNET_CHAIN else None)
        modules = [getattr(model, name) for name in _RESNET_CHAIN]
        return nn.Sequential(*modules[:cut]), nn.Sequential(*modules[cut:], nn.Flatten(), model.fc)
    raise NotImplementedError(f"split_at knows MobileNetV2 and ResNet, not {type(model).__name__}; "
                              "run the whole model instead (the result is the same, only slower)")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def feature_head(model: nn.Module) -> nn.Module:
    """The part of ``model`` that turns the head's input into the model's output.

    This is what to train on features from :func:`tlhelpers.training.cache_features`, which
    are exactly the head's input. For almost every classifier it is the head itself (a
    ``Linear`` on a feature vector). SqueezeNet's head is a 1x1 ``Conv2d`` on a feature map,
    followed in its ``classifier`` by ReLU and pooling, and by a flatten in ``forward``: for
    such a head this returns those layers, sharing the head module, plus ``nn.Flatten()``.
    A plain ``nn.Sequential`` gets its head plus the parameter-free layers after it.
    """
    name, head = find_head(model)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return head
    names = [n for n, _ in parent.named_children()]
    after = [parent.get_submodule(n) for n in names[names.index(child) + 1:]]
    if isinstance(head, nn.Conv2d):
        return nn.Sequential(head, *after, nn.Flatten())
    if parent is model:
        return nn.Sequential(head, *after) if after else head
    return head


def head_features(model: nn.Module) -> int:
    """Input width of the head: the size of the feature vector the backbone produces."""
    _, head = find_head(model)
    return head.in_features if isinstance(head, nn.Linear) else head.in_channels


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper, else itself.

    Checkpoints are written and read through this, so a checkpoint from one process and one
    from ``torchrun`` with N processes are interchangeable.
    """
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


@torch.no_grad()
def fingerprint(model: nn.Module) -> dict[str, object]:
    """A small description of an architecture, to refuse checkpoints from another one."""
    model = unwrap(model)
    try:
        _, head = find_head(model)
        classes = head.out_features if isinstance(head, nn.Linear) else head.out_channels
    except HeadNotFoundError:
        classes = None
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    return {"class": type(model).__name__, "num_classes": classes, "shapes": shapes}
