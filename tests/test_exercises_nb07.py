"""Notebook 07's exercise checks: placeholder, wrong answers and crashes say "Not yet" with a hint;
right answers say "Right". Small real data: random maps for q1, a few generated images in two
ImageFolder roots and a tiny pooling "network" for q2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

from tlhelpers import data, exercises, training
from tlhelpers.exercises import nb07


@pytest.fixture(autouse=True)
def fresh_history():
    exercises.HISTORY.clear()
    yield
    exercises.HISTORY.clear()


ROWS = torch.randn(6, 4 * 3 * 3)


def columns(rows):
    return rows.reshape(-1, 4, 3, 3)


def test_q1_placeholder_and_untouched_scaffold():
    assert "still `...`" in str(nb07.q1(earlier_features=..., rows=ROWS, columns=columns))

    def earlier_features(rows, columns):
        ...

    feedback = nb07.q1(earlier_features=earlier_features, rows=ROWS, columns=columns)
    assert not feedback and "returned None" in feedback.message and "Hint:" in str(feedback)


@pytest.mark.parametrize("answer, says", [
    (lambda rows, columns: columns(rows).flatten(1), "one number per channel"),
    (lambda rows, columns: columns(rows).amax(dim=(2, 3)), "largest value"),
    (lambda rows, columns: columns(rows).mean(dim=(1, 2)), "one number per channel"),
    (lambda rows, columns: columns(rows)[:, :, 0, 0], "values are not"),
    (lambda rows, columns: columns(rows).mean(), "one vector per image"),
    (lambda rows, columns: columns(rows).numpy().mean(axis=(2, 3)), "not a tensor"),
    (lambda rows, columns: 1 / 0, "ZeroDivisionError"),
])
def test_q1_wrong_answers(answer, says):
    feedback = nb07.q1(earlier_features=answer, rows=ROWS, columns=columns)
    assert not feedback and says in feedback.message
    assert "mean(dim=(2, 3))" not in str(feedback)


def test_q1_right_answer():
    assert not nb07.q1(earlier_features=..., rows=ROWS, columns=columns)
    feedback = nb07.q1(earlier_features=lambda rows, columns: columns(rows).mean(dim=(2, 3)), rows=ROWS,
                       columns=columns)
    assert feedback and str(feedback).startswith("Right.")


NETWORK = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())      # no head: cache_features runs it whole
TRANSFORM = T.Compose([T.Resize((16, 16)), T.ToTensor()])


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Two roots sharing their train/ images: val/ of "same" repeats train/'s kind, val/ of "other" is noise."""
    rng = np.random.default_rng(0)
    made = {}
    for kind in ("same", "other"):
        root = tmp_path_factory.mktemp(kind)
        for split in ("train", "val"):
            for label, channel in (("a", 0), ("b", 2)):
                folder = root / split / label
                folder.mkdir(parents=True)
                for i in range(6):
                    pixels = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
                    if split == "train" or kind == "same":
                        pixels[..., channel] += 150
                    Image.fromarray(pixels).save(folder / f"{i}.png")
        made[kind] = root
    return made


def probe(root, fit="train"):
    features = {}
    for split in ("train", "val"):
        dataset = data.load_dataset("imagefolder", split, root=root, transform=TRANSFORM)
        features[split] = [t.numpy() for t in training.cache_features(NETWORK, DataLoader(dataset, batch_size=4)).tensors]
    return LogisticRegression().fit(*features[fit]).score(*features["val"])


def check(answer, roots):
    return nb07.q2(probe_accuracy=answer, roots=roots, network=NETWORK, transform=TRANSFORM)


def test_q2_placeholder_and_untouched_scaffold(roots):
    assert "still `...`" in str(check(..., roots))

    def probe_accuracy(root):
        ...

    feedback = check(probe_accuracy, roots)
    assert not feedback and "returned None" in feedback.message and "Hint:" in str(feedback)


@pytest.mark.parametrize("answer, says", [
    (lambda root: 100 * probe(root), "not a percentage"),
    (lambda root: probe(root, fit="val"), "which folder you fit on"),
    (lambda root: "high", "not a number"),
    (lambda root: 1 / 0, "ZeroDivisionError"),
])
def test_q2_wrong_answers(answer, says, roots):
    feedback = check(answer, roots)
    assert not feedback and says in feedback.message


def test_q2_right_answer_and_verify(roots):
    assert not nb07.q1(earlier_features=..., rows=ROWS, columns=columns)
    assert nb07.q1(earlier_features=lambda rows, columns: columns(rows).mean(dim=(2, 3)), rows=ROWS, columns=columns)
    assert not check(..., roots)
    feedback = check(probe, roots)
    assert feedback and str(feedback).startswith("Right.")
    assert probe(roots["same"]) > probe(roots["other"])        # the fixture tells the two roots apart
    assert "every exercise" in exercises.verify("nb07")
