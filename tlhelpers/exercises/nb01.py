"""Exercise checks for 01 · Loading pretrained weights.

Both exercises have the learner write the notebook's skill, preprocessing with the weights' own
transforms and predicting in plain PyTorch, as a function; the check calls it and compares with
a reference it computes from the learner's own model, weights and photo.
"""

from __future__ import annotations

import math

import torch

from tlhelpers.exercises import Exercise, Wrong, close, register


def _probabilities(model, batch: torch.Tensor) -> torch.Tensor:
    """Softmax over the model's outputs in eval mode, leaving the model in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return model(batch).softmax(dim=1)
    finally:
        model.train(was_training)


def _number(value, what: str) -> float:
    if value is None:
        raise Wrong(f"{what} returned None: `return` the summed probability")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise Wrong(f"{what} returned a tensor of shape {tuple(value.shape)}; it should return one number "
                        "(the probabilities at cat_ids added up)")
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise Wrong(f"{what} returned a {type(value).__name__}, not a number") from None


SIZES = (224, 96, 48, 32)


def _cat_share(cat_share, model, weights, photo, cat_ids) -> str:
    preset = weights.transforms()
    ratio = preset.resize_size[0] / preset.crop_size[0]
    values = {}
    for size in SIZES:
        mine = _number(cat_share(size), f"cat_share({size})")
        if not 0.0 <= mine <= 1.0 + 1e-6:
            raise Wrong(f"cat_share({size}) = {mine:.3g} is not a probability: turn the outputs into "
                        "probabilities (softmax over the 1000 classes) before adding them up")
        pipeline = weights.transforms(crop_size=size, resize_size=round(size * ratio))
        reference = _probabilities(model, pipeline(photo).unsqueeze(0))[0, list(cat_ids)].sum().item()
        if not math.isclose(mine, reference, rel_tol=1e-3, abs_tol=1e-7):
            if size == 224:
                raise Wrong("at 224 px your P(any cat) differs from the weights' own pipeline: check the "
                            "resize-to-crop ratio, the normalization, eval mode, and that you add the cat "
                            "classes' probabilities")
            raise Wrong(f"right at 224 px, but at {size} px your P(any cat) differs from the weights' "
                        "pipeline at that size: keep their resize-to-crop ratio and their normalization")
        values[size] = mine
    if model.training:
        raise Wrong("your function left the model in training mode; the notebook predicts in eval mode")
    return f"P(any cat) matches the weights' own pipeline at {', '.join(f'{s} px' for s in SIZES)}"


q1 = Exercise("how small can the input be", _cat_share, names=("cat_share", "model", "weights", "photo", "cat_ids"),
              hint="weights.transforms(crop_size=..., resize_size=...) builds the weights' pipeline at another "
                   "size; keep resize/crop = preprocess.resize_size[0] / preprocess.crop_size[0]; predict as in "
                   "section 5 (eval, inference_mode, softmax), then add the probabilities at cat_ids.")


def _top3(top3, model, preprocess, categories, photo) -> str:
    for angle in (0, 90):
        image = photo.rotate(angle, expand=True)
        answer = top3(image)
        if answer is None:
            raise Wrong("top3 returned None: `return` the list of (category, probability) pairs")
        try:
            pairs = [(label, float(p)) for label, p in answer]
        except (TypeError, ValueError):
            raise Wrong("top3 should return three (category name, probability) pairs, e.g. "
                        "[('tabby', 0.4), ...]") from None
        if len(pairs) != 3:
            raise Wrong(f"top3 returned {len(pairs)} pairs, not 3")
        if not all(isinstance(label, str) for label, _ in pairs):
            raise Wrong("the first item of each pair should be the category's name: look the index up in "
                        "`categories`")
        if not all(0.0 <= p <= 1.0 + 1e-6 for _, p in pairs):
            raise Wrong("some values are not probabilities: apply softmax to the model's outputs first")
        probs = _probabilities(model, preprocess(image).unsqueeze(0))[0]
        values, indices = probs.topk(3)
        expected = [categories[i] for i in indices.tolist()]
        if [label for label, _ in pairs] != expected:
            raise Wrong(f"for the photo turned by {angle} degrees your three categories differ from the model's "
                        "top-3 with the weights' preprocessing (right order: most probable first)")
        if not all(close(p, q, 1e-4) for (_, p), q in zip(pairs, values.tolist(), strict=True)):
            raise Wrong(f"for the photo turned by {angle} degrees the categories are right but the "
                        "probabilities differ: softmax over all 1000 outputs, in eval mode")
    return "your top-3 matches the model's for the photo as is and turned by 90 degrees"


q2 = Exercise("turned upside down", _top3, names=("top3", "model", "preprocess", "categories", "photo"),
              hint="section 5 does this for a batch: preprocess(image) with a batch dimension, eval mode, "
                   "torch.inference_mode(), softmax(dim=1), then topk(3) and categories[i] for each index.")

register(globals())
