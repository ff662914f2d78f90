"""Exercise checks for 07 · When the data is different.

q1: features from one block earlier (the bottom's feature maps, averaged over space).
q2: a linear probe on frozen features, fitted on one folder and scored on another (the leakage
exercise). Each check calls the learner's function on the learner's own objects and compares it
with a reference it computes from the same objects; it never prints the reference.
"""

from __future__ import annotations

import math

import torch

from tlhelpers.exercises import Exercise, Wrong, register


def _earlier_features(earlier_features, rows, columns) -> str:
    got = earlier_features(rows, columns)
    if got is None:
        raise Wrong("earlier_features returned None: compute one vector per image and `return` it")
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"earlier_features returned a {type(got).__name__}, not a tensor")
    maps = columns(rows)
    if got.dim() < 1 or got.shape[0] != maps.shape[0]:
        raise Wrong(f"{got.shape[0] if got.dim() else 0} rows for {maps.shape[0]} images: one vector per image")
    if got.dim() != 2 or got.shape[1] != maps.shape[1]:
        raise Wrong(f"each image's vector has shape {tuple(got.shape[1:])}; it should hold one number per channel "
                    f"of the maps ({maps.shape[1]} channels)")
    expected = maps.float().mean(dim=(2, 3))
    got = got.detach().float()
    if torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        return f"{got.shape[1]} numbers per image, each channel's map averaged over its positions"
    if torch.allclose(got, maps.float().amax(dim=(2, 3)), rtol=1e-4, atol=1e-5):
        raise Wrong("that is each channel's largest value; the question asks for the average over the positions")
    raise Wrong("the shape is right, the values are not: each number should be one channel's map averaged over "
                "its height and width")


q1 = Exercise("features from one block earlier", _earlier_features, names=("earlier_features", "rows", "columns"),
              hint="`columns(rows)` gives the maps, shaped (images, channels, height, width); average over the "
                   "dimensions that index positions and keep the others.")


def _features(root, split: str, network, transform):
    from torch.utils.data import DataLoader

    from tlhelpers import data, training

    dataset = data.load_dataset("imagefolder", split, root=root, transform=transform)
    features, labels = training.cache_features(network, DataLoader(dataset, batch_size=16)).tensors
    return features.numpy(), labels.numpy()


def _probe_accuracy(probe_accuracy, roots, network, transform) -> str:
    from sklearn.linear_model import LogisticRegression

    for kind, root in roots.items():
        got = probe_accuracy(root)
        if got is None:
            raise Wrong("probe_accuracy returned None: compute the accuracy and `return` it")
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise Wrong(f"probe_accuracy returned a {type(got).__name__}, not a number") from None
        if not (math.isfinite(got) and 0 <= got <= 1):
            raise Wrong(f"probe_accuracy returned {got:g} for the {kind!r} folders: return a fraction between 0 "
                        "and 1 (what a scikit-learn classifier's `score` gives), not a percentage")
        train, val = (_features(root, split, network, transform) for split in ("train", "val"))
        expected = LogisticRegression().fit(*train).score(*val)
        if abs(got - expected) > 1.5 / len(val[1]):     # within one image: rounding in the features may move one
            raise Wrong(f"on the {kind!r} folders your accuracy is not what a LogisticRegression with its defaults, "
                        "fitted on train/'s frozen features, scores on val/'s: check which folder you fit on, which "
                        "you score, and that the features come from the frozen network")
    return "a probe fitted on each root's train/ and scored on its val/"


q2 = Exercise("a probe scored on another folder", _probe_accuracy,
              names=("probe_accuracy", "roots", "network", "transform"),
              hint="data.load_dataset('imagefolder', split, root=root, transform=...) reads one folder; "
                   "training.cache_features(network, DataLoader(...)) gives (features, labels); a scikit-learn "
                   "model fits on numpy arrays and its `score` is the accuracy.")

register(globals())
