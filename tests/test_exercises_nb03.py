"""03's first exercise check (the second, the deeper head, is tested in test_exercises.py): replacing
the head inside a classifier, on meta-device torchvision models the check builds itself."""

from __future__ import annotations

import pytest
from torch import nn

from tlhelpers import exercises
from tlhelpers.exercises import nb03


@pytest.fixture(autouse=True)
def fresh_history():
    exercises.HISTORY.clear()
    yield
    exercises.HISTORY.clear()


def right(net, num_classes):
    index = max(i for i, layer in enumerate(net.classifier) if isinstance(layer, nn.Linear))
    net.classifier[index] = nn.Linear(net.classifier[index].in_features, num_classes)
    return net.classifier[index]


def shortcut(net, num_classes):
    net.classifier = nn.Linear(net.classifier[-1].in_features, num_classes)
    return net.classifier


def first_linear(net, num_classes):
    index = next(i for i, layer in enumerate(net.classifier) if isinstance(layer, nn.Linear))
    net.classifier[index] = nn.Linear(net.classifier[index].in_features, num_classes)
    return net.classifier[index]


def fixed_width(net, num_classes):
    net.classifier[-1] = nn.Linear(1280, num_classes)
    return net.classifier[-1]


def test_q1_says_what_is_wrong():
    assert "still `...`" in str(nb03.q1(replace_classifier_head=...))

    def replace_classifier_head(net, num_classes):
        ...
    assert "returned None" in nb03.q1(replace_classifier_head=replace_classifier_head).message
    assert "container must stay" in nb03.q1(replace_classifier_head=shortcut).message
    assert "three Linear" in nb03.q1(replace_classifier_head=first_linear).message
    assert "in_features" in nb03.q1(replace_classifier_head=fixed_width).message
    feedback = nb03.q1(replace_classifier_head=lambda net, n: net.nope)
    assert not feedback and "AttributeError" in feedback.message


def test_q1_right():
    assert not nb03.q1(replace_classifier_head=...)
    feedback = nb03.q1(replace_classifier_head=right)
    assert feedback and str(feedback).startswith("Right.")
