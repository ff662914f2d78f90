"""The simulator's architecture picker: any torchvision classifier, with its weights if cached.

Nothing here downloads: a model whose pretrained weights are in the torch hub cache gets
them (checked by :func:`tlhelpers.models.load_model`), any other runs with random
initialisation, and :class:`Loaded` says so in words for the widget to show.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from tlhelpers import assets, models

#: Image sizes tried in turn: the smallest an architecture accepts keeps a CPU step quick.
IMAGE_SIZES = (64, 96, 224)
DEFAULT_ARCH = "mobilenet_v2"
#: Listed first (after those whose weights are cached): the course's two reference models.
FEATURED = (DEFAULT_ARCH, "resnet18")


@dataclass(frozen=True)
class Loaded:
    """A model ready for the simulator, the words that describe its weights, and its input size."""

    name: str
    model: nn.Module
    weights: str | None
    note: str
    image_size: int


def cached_weights(name: str):
    """The weights of ``name`` whose file is in the hub cache, DEFAULT first; ``None`` if none."""
    enum = torchvision.models.get_model_weights(name)
    members = [enum.DEFAULT] + [m for m in enum if m is not enum.DEFAULT]
    for member in members:
        if (assets.checkpoint_dir() / member.url.rsplit("/", 1)[-1]).is_file():
            return member
    return None


def choices() -> list[dict]:
    """Every torchvision classifier as ``{"name", "label"}``: cached weights first, then
    MobileNetV2 and ResNet-18, then the rest by name."""
    rows = []
    for name in models.classification_models():
        enum = torchvision.models.get_model_weights(name)
        params = enum.DEFAULT.meta.get("num_params")
        cached = cached_weights(name) is not None
        size = f"{params / 1e6:.1f} M parameters" if params else "size unknown"
        rows.append({"name": name, "cached": cached,
                     "label": f"{name} ({size}{', ImageNet weights' if cached else ', random init'})"})
    rows.sort(key=lambda row: (not row["cached"], row["name"] not in FEATURED, row["name"]))
    return [{"name": r["name"], "label": r["label"]} for r in rows]


def input_size(model: nn.Module) -> int:
    """The first of :data:`IMAGE_SIZES` the model accepts (one image, eval mode, no gradients)."""
    was = model.training
    model.eval()
    try:
        for size in IMAGE_SIZES:
            try:
                with torch.no_grad():
                    model(torch.zeros(1, 3, size, size))
                return size
            except (RuntimeError, ValueError, AssertionError):
                continue
    finally:
        model.train(was)
    raise ValueError(f"{type(model).__name__} accepts none of the image sizes {IMAGE_SIZES}")


def load(name: str) -> Loaded:
    """Build torchvision classifier ``name`` for the simulator, pretrained if its weights are cached."""
    if name not in models.classification_models():
        raise ValueError(f"Unknown model {name!r}; choose a torchvision classifier such as "
                         f"{DEFAULT_ARCH}, resnet18 or vit_b_16")
    member = cached_weights(name)
    if member is not None:
        model, _ = models.load_model(name, weights=member.name)
        note = f"ImageNet weights ({member.name}), read from the torch hub cache"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. Inception's notice about its init
            model = torchvision.models.get_model(name, weights=None)
        note = (f"random initialisation: no pretrained weights for {name} are cached on this machine "
                f"({assets.checkpoint_dir()}); with internet, models.load_model({name!r}) fetches them")
    return Loaded(name, model, member.name if member else None, note, input_size(model))


def architecture_name(model: nn.Module) -> str | None:
    """The torchvision name of ``model``'s architecture (``"resnet18"``), or ``None``.

    Candidates are the builders in the model's own torchvision module; the one whose
    parameter shapes match (the head aside, which transfer learning replaces) wins. They are
    built on the meta device, so this costs no memory.
    """
    module = type(model).__module__
    if not module.startswith("torchvision.models"):
        return None
    head = None
    with contextlib.suppress(models.HeadNotFoundError):
        head, _ = models.find_head(model)

    def shapes(m: nn.Module) -> dict[str, tuple]:
        return {n: tuple(p.shape) for n, p in m.named_parameters()
                if not (head and models.under(n, head))}

    wanted = shapes(model)
    for name in models.classification_models():
        if torchvision.models.get_model_builder(name).__module__ != module:
            continue
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            try:
                candidate = torchvision.models.get_model(name, weights=None)
            except Exception:  # a builder that cannot run on meta (RegNet's width arithmetic)
                continue
        for aux in models.AUX_HEADS:
            if getattr(model, aux, 1) is None and isinstance(getattr(candidate, aux, None), nn.Module):
                setattr(candidate, aux, None)
        if shapes(candidate) == wanted:
            return name
    return None
