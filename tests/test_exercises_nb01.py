"""01's exercise checks on a small real model (MobileNetV2, random weights, the IMAGENET1K_V1 transforms):
a placeholder, wrong answers and a crash say "Not yet" with the hint; a right answer says "Right"."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from tlhelpers import exercises
from tlhelpers.exercises import nb01

CAT_IDS = [281, 282, 283, 284, 285]


@pytest.fixture(autouse=True)
def fresh_history():
    exercises.HISTORY.clear()
    yield
    exercises.HISTORY.clear()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    # a tiny stand-in for the pretrained network: 1000 outputs, sensitive to where things are in the image
    model = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 1000)).eval()
    with torch.no_grad():
        model[2].weight.mul_(20)
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    blocks = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)     # coarse structure, so
    photo = Image.fromarray(np.kron(blocks, np.ones((30, 30, 1), dtype=np.uint8)))     # crops of it differ
    categories = [f"class {i}" for i in range(1000)]
    return model, weights, photo, categories


def cat_share_with(model, weights, photo, ratio=None, normalize=True):
    preset = weights.transforms()
    ratio = ratio or preset.resize_size[0] / preset.crop_size[0]

    def cat_share(size):
        pipeline = weights.transforms(crop_size=size, resize_size=round(size * ratio))
        if not normalize:
            pipeline.mean, pipeline.std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        with torch.inference_mode():
            return model.eval()(pipeline(photo).unsqueeze(0)).softmax(dim=1)[0, CAT_IDS].sum().item()
    return cat_share


def q1(setup, function):
    model, weights, photo, _ = setup
    return nb01.q1(cat_share=function, model=model, weights=weights, photo=photo, cat_ids=CAT_IDS)


def test_q1_placeholder_scaffold_and_crash(setup):
    assert "still `...`" in str(q1(setup, ...))

    def cat_share(size):
        ...
    feedback = q1(setup, cat_share)
    assert not feedback and "returned None" in feedback.message and "Hint:" in str(feedback)
    feedback = q1(setup, lambda size: 1 / 0)
    assert not feedback and "ZeroDivisionError" in feedback.message


def test_q1_wrong_answers(setup):
    model, weights, photo, _ = setup
    assert "ratio" in q1(setup, cat_share_with(model, weights, photo, ratio=1.0)).message
    assert "224 px" in q1(setup, cat_share_with(model, weights, photo, normalize=False)).message
    assert "not a probability" in q1(setup, lambda size: 3.0).message
    assert "one number" in q1(setup, lambda size: torch.zeros(5)).message


def test_q1_right_and_verify(setup):
    model, weights, photo, _ = setup
    assert not q1(setup, ...)
    feedback = q1(setup, cat_share_with(model, weights, photo))
    assert feedback, str(feedback)
    assert str(feedback).startswith("Right.")


def top3_with(model, preprocess, categories, softmax=True, names=True):
    def top3(image):
        with torch.inference_mode():
            out = model.eval()(preprocess(image).unsqueeze(0))[0]
        out = out.softmax(dim=0) if softmax else out
        values, indices = out.topk(3)
        return [(categories[i] if names else i, p) for p, i in zip(values.tolist(), indices.tolist(), strict=True)]
    return top3


def q2(setup, function):
    model, weights, photo, categories = setup
    return nb01.q2(top3=function, model=model, preprocess=weights.transforms(), categories=categories, photo=photo)


def test_q2_wrong_answers(setup):
    model, weights, _, categories = setup
    preprocess = weights.transforms()

    def top3(image):
        ...
    assert "returned None" in q2(setup, top3).message
    assert "names" in q2(setup, top3_with(model, preprocess, categories, names=False)).message \
        or "name" in q2(setup, top3_with(model, preprocess, categories, names=False)).message
    assert "softmax" in q2(setup, top3_with(model, preprocess, categories, softmax=False)).message
    assert "differ" in q2(setup, top3_with(model, weights.transforms(crop_size=96, resize_size=110), categories)).message
    assert "not 3" in q2(setup, lambda image: [("a", 0.5)]).message


def test_q2_right_then_verify(setup):
    model, weights, _, categories = setup
    assert not q2(setup, ...)
    assert q2(setup, top3_with(model, weights.transforms(), categories))
    assert not q1(setup, ...)
    model_, weights_, photo_, _ = setup
    assert q1(setup, cat_share_with(model_, weights_, photo_))
    assert "every exercise" in exercises.verify("nb01")
