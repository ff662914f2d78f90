"""Export a trained classifier as a bundle that leaves the course behind.

A bundle is a folder that torch alone, or onnxruntime alone, can serve::

    bundle.json          classes, preprocessing (resize, crop, mean, std, interpolation, RGB),
                         backbone and weights enum, library versions, ONNX opset, the test
                         accuracy as served, and the sha256 of every file
    model.pt2            the program, torch.export.save (batch size dynamic)
    model.onnx           the same program as ONNX, checked with onnx.checker
    weights.safetensors  the state_dict, for loading into the architecture by hand
    labels.txt           one class name per line
    predict.py           tlhelpers/serving.py itself: `python predict.py IMAGE...`

The folder is written under a temporary name next to its destination and renamed into place
only when every file is written and checked (:func:`tlhelpers.files.atomic_folder`), so a failed
export leaves nothing behind, and a re-export over an existing bundle keeps the old one whole
until the new one takes its place. The caller's model is not touched: a copy is exported.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

import tlhelpers
from tlhelpers import serving
from tlhelpers.checks import require
from tlhelpers.evaluation import top1
from tlhelpers.files import atomic_folder, sha256_of

FORMAT = "tlhelpers-bundle"
VERSION = 1
OPSET = 18


def preprocessing_of(transform) -> dict:
    """A torchvision ``ImageClassification`` preset as plain values (what ``bundle.json`` stores)."""
    try:
        return {"resize_size": int(transform.resize_size[0]), "crop_size": int(transform.crop_size[0]),
                "mean": [float(v) for v in transform.mean], "std": [float(v) for v in transform.std],
                "interpolation": transform.interpolation.value, "convert": "RGB (tlhelpers.serving.to_rgb)"}
    except AttributeError:
        raise TypeError(f"expected torchvision's ImageClassification preset (weights.transforms()), got "
                        f"{type(transform).__name__}") from None


def _versions() -> dict[str, str]:
    import onnx
    import torchvision

    versions = {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
                "onnx": str(onnx.__version__), "tlhelpers": str(tlhelpers.__version__), "numpy": np.__version__}
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions["onnxruntime"] = str(onnxruntime.__version__)
    return versions


def _write_programs(model: nn.Module, example: torch.Tensor, folder: Path) -> None:
    # by position, not by name: any forward(first_argument) exports (nn.Sequential names it `input`)
    dynamic = ({0: torch.export.Dim("batch")},)
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
    torch.export.save(program, str(folder / "model.pt2"))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(folder / "model.onnx"), external_data=False,
                          dynamic_shapes=dynamic, opset_version=OPSET)
    import onnx

    onnx.checker.check_model(onnx.load(str(folder / "model.onnx")), full_check=True)


def served_accuracy(folder: Path, images: Dataset, runtime: str = "pt2", batch_size: int = 64) -> float:
    """Accuracy on ``images`` ((PIL image, label) pairs) through the bundle's own serving path."""
    predictor = serving.Predictor(folder, runtime)
    spec, predicted = predictor.manifest["preprocessing"], []
    for start in range(0, len(images), batch_size):
        items = [images[i] for i in range(start, min(start + batch_size, len(images)))]
        predicted.append(predictor(np.stack([serving.preprocess(image, spec) for image, _ in items])).argmax(axis=1))
    labels = [images[i][1] for i in range(len(images))]
    return top1(torch.from_numpy(np.concatenate(predicted)), torch.tensor(labels))


def export(model: nn.Module, folder: str | Path, *, classes: Sequence[str], transform, backbone: str,
           weights: str, test_images: Dataset | None = None, overwrite: bool = False) -> dict:
    """Write a copy of ``model`` (in eval mode, on the CPU) as a bundle in ``folder``; return its manifest.

    ``transform`` is the weights' preset (``weights.transforms(...)``) the model was trained
    with; ``test_images`` ((PIL image, label) pairs of the held-out test split), when given,
    are scored through the exported program with the bundle's own preprocessing and recorded.
    An existing ``folder`` is refused unless ``overwrite``; then it stays whole until the new
    bundle is complete. ``model`` itself keeps its mode and device.
    """
    require("export", "bundle.export")
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists; choose another folder or pass overwrite=True")
    classes = [str(name) for name in classes]
    spec = preprocessing_of(transform)
    model = copy.deepcopy(model).eval().cpu()
    example = torch.zeros(2, 3, spec["crop_size"], spec["crop_size"])
    with atomic_folder(folder) as staging:
        from safetensors.torch import save_file

        _write_programs(model, example, staging)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(staging / "weights.safetensors"))
        (staging / "labels.txt").write_text("\n".join(classes) + "\n")
        shutil.copyfile(serving.__file__, staging / "predict.py")
        names = ("model.pt2", "model.onnx", "weights.safetensors", "labels.txt", "predict.py")
        manifest = {"format": FORMAT, "version": VERSION, "backbone": backbone, "weights": weights,
                    "classes": classes, "preprocessing": spec, "onnx_opset": OPSET, "versions": _versions(),
                    "input": {"shape": ["batch", 3, spec["crop_size"], spec["crop_size"]], "dtype": "float32"},
                    "files": {name: {"name": name, "sha256": sha256_of(staging / name)} for name in names},
                    "test": None}
        (staging / serving.BUNDLE_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if test_images is not None:
            manifest["test"] = {"images": len(test_images), "split": "test (held-out, used for no choice)",
                                "accuracy_pt2": served_accuracy(staging, test_images, "pt2"),
                                "accuracy_onnx": served_accuracy(staging, test_images, "onnx")}
            (staging / serving.BUNDLE_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
