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
    return f"a {len(layers)}-layer head with {trainable:,} trainable parameters on a frozen backbone"


q2 = Exercise("a deeper head", _deeper_head, names=("deeper_head",),
              hint="nn.Sequential takes the layers in order; the middle width is 256, and Dropout's "
                   "first argument is the probability of zeroing a value.")

register(globals())
