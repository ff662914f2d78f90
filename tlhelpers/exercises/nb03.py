"""Exercise checks for 03 · Replacing the head.

The pattern every notebook's checks follow: the learner writes a function (so an untouched
scaffold, whose body is ``...``, runs without a traceback), the check calls it on objects it
builds itself and compares with a reference it computes, and says what is wrong without
printing the answer.
"""

from __future__ import annotations

import torch
from torch import nn

from tlhelpers.exercises import Exercise, Wrong, register

CLASSIFIER_MODELS = ("mobilenet_v2", "convnext_tiny", "vgg16")   # three places the head sits in a classifier


def _replace_classifier_head(replace_classifier_head) -> str:
    import torchvision

    for name in CLASSIFIER_MODELS:
        with torch.device("meta"):
            net = torchvision.models.get_model(name, weights=None).eval()
            before = [type(layer).__name__ for layer in net.classifier]
            index = max(i for i, layer in enumerate(net.classifier) if isinstance(layer, nn.Linear))
            width, old = net.classifier[index].in_features, net.classifier[index]
            new = replace_classifier_head(net, 7)
            if new is None:
                raise Wrong(f"on {name} your function returned None: `return` the new layer")
            if not isinstance(net.classifier, nn.Sequential):
                raise Wrong(f"on {name}, net.classifier is now a {type(net.classifier).__name__}: the container "
                            "must stay, only its last Linear changes")
            after = [type(layer).__name__ for layer in net.classifier]
            if len(after) != len(before):
                raise Wrong(f"on {name}, net.classifier had {len(before)} layers and now has {len(after)}: replace "
                            "one layer, keep the others")
            if net.classifier[index] is old or net.classifier[index] is not new:
                raise Wrong(f"on {name}, the layer at classifier[{index}], the last Linear, was not replaced by the "
                            "layer you returned" + (" (VGG's classifier holds three Linear layers)"
                                                    if name == "vgg16" else ""))
            changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b and i != index]
            if changed:
                raise Wrong(f"on {name}, classifier[{changed[0]}] changed too: only the head should")
            if not isinstance(new, nn.Linear) or new.in_features != width or new.out_features != 7:
                raise Wrong(f"on {name}, the new head should be a Linear from the old head's in_features "
                            f"({width}) to num_classes (7 in this check)")
            if name == "convnext_tiny":              # a meta forward pass: shapes only, no numbers
                shape = tuple(net(torch.empty(2, 3, 224, 224)).shape)
                if shape != (2, 7):
                    raise Wrong(f"on {name}, a forward pass gives {shape}, not (2, num_classes)")
    return f"the head replaced and the rest of the classifier kept on {', '.join(CLASSIFIER_MODELS)}"


q1 = Exercise("replace the head, not the classifier", _replace_classifier_head, names=("replace_classifier_head",),
              hint="find the index of the last nn.Linear in net.classifier (loop over it, or check from the end), "
                   "read that layer's in_features, and assign the new Linear at that index.")


def _deeper_head(deeper_head) -> str:
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.resnet18(weights=None)
    for parameter in model.parameters():
        parameter.requires_grad = False
    head = deeper_head(model.fc.in_features, 7)
    if head is None:
        raise Wrong("deeper_head returned None: build the head and `return` it")
    if not isinstance(head, nn.Module):
        raise Wrong(f"deeper_head returned a {type(head).__name__}, not an nn.Module")
    layers = [type(layer).__name__ for layer in head.modules() if not isinstance(layer, nn.Sequential)]
    if layers != ["Linear", "ReLU", "Dropout", "Linear"]:
        raise Wrong(f"the head's layers are {layers}; the question asks for four, in a given order")
    first, last = (layer for layer in head.modules() if isinstance(layer, nn.Linear))
    if first.in_features != model.fc.in_features:
        raise Wrong(f"the first Linear takes {first.in_features} inputs; it must take what the backbone "
                    "gives the head (the `in_features` argument)")
    if last.out_features != 7:
        raise Wrong(f"asked for 7 classes, the last Linear gives {last.out_features}: use `num_classes`")
    dropout = next(layer for layer in head.modules() if isinstance(layer, nn.Dropout))
    if dropout.p != 0.2:
        raise Wrong(f"the Dropout drops {dropout.p}; the question asks for another probability")
    model.fc = head
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected = sum(p.numel() for p in head.parameters())
    if trainable != expected:
        raise Wrong("some parameters outside the head train too: the backbone must stay frozen")
    return ("Linear, ReLU, Dropout, Linear, and on a frozen backbone only the head trains (checked with "
            "7 classes, so its count differs from yours)")


q2 = Exercise("a deeper head", _deeper_head, names=("deeper_head",),
              hint="nn.Sequential takes the layers in order; the middle width is 256, and Dropout's "
                   "first argument is the probability of zeroing a value.")

register(globals())
