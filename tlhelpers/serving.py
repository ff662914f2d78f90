"""Serve an exported bundle with torch alone or with onnxruntime alone: no tlhelpers, no torchvision.

A bundle (written by :func:`tlhelpers.bundle.export` or ``python -m tlhelpers.finetune --export
DIR``) is a folder with ``bundle.json`` (classes, preprocessing, versions, test accuracy),
``model.pt2`` (``torch.export``), ``model.onnx`` and ``weights.safetensors``. The export copies
this very file into the bundle as ``predict.py``, so on a machine with only NumPy, Pillow and
one of torch / onnxruntime::

    python predict.py photo.jpg other.png            # torch.export program (needs torch)
    python predict.py --runtime onnx photo.jpg       # ONNX (needs onnxruntime, not torch)

and with the course installed, ``python -m tlhelpers.predict BUNDLE IMAGE...`` (or
``tlhelpers-predict``; options go anywhere). An unreadable image gets one line on stderr; the
others are still predicted, in batches of ``BATCH`` (exit status 1 when any image failed, 2 for a
bad bundle). Every file of the bundle is checked against the sha256 ``bundle.json`` records
before anything is loaded: a changed, damaged or missing file is refused with one line naming it.

The preprocessing is torchvision's ``ImageClassification`` preset, written with Pillow and
NumPy: any image mode to 8-bit RGB (:func:`to_rgb`), resize of the shorter side, center crop,
scale to [0, 1], normalise. On PIL images it gives exactly the tensors the preset gives
(``tests/test_bundle.py`` checks it). This module imports nothing from tlhelpers, on purpose.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BUNDLE_FILE = "bundle.json"
RUNTIMES = ("pt2", "onnx")
#: Images preprocessed and predicted together: a folder of 10,000 photos never sits in memory at once.
BATCH = 64

#: Integer and float grayscale modes: Pillow's convert("RGB") clips them to 0..255, so a 16-bit
#: scan (0..65535) comes out almost white. They are rescaled to 8 bits first.
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


class BundleError(ValueError):
    """A folder that is not a usable bundle; the message says what is wrong."""


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """``image`` as 8-bit RGB, whatever its mode, as a viewer would show it.

    * 16-bit grayscale (``I;16*``) is scaled from 0..65535 to 0..255; 32-bit integer (``I``)
      likewise when its values exceed 255 (16-bit PNGs open as ``I`` in some Pillow versions),
      else taken as 0..255; float (``F``) from 0..1 when its values fit there, else clipped to 0..255.
    * Transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour, premultiplied
      ``RGBa``/``La``) is composited over ``background`` (white), not dropped: a transparent
      pixel's hidden colour is often black.
    * Everything else (``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``) goes
      through Pillow's own conversion.
    """
    mode = image.mode
    if mode in _WIDE_GRAY:
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and values.size and values.max() > 255):
            values = values / 257.0
        elif mode == "F" and values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        gray = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBa", "La"):
        image, mode = image.convert("RGBA") if mode == "RGBa" else image.convert("LA"), "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(image: Image.Image, spec: dict) -> np.ndarray:
    """One image as the network's float32 input (3, crop, crop), by the bundle's ``preprocessing``."""
    image = to_rgb(image)
    width, height = image.size
    size, crop = int(spec["resize_size"]), int(spec["crop_size"])
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    image = image.resize((new_width, new_height), _RESAMPLE[spec["interpolation"]])
    top, left = int(round((new_height - crop) / 2.0)), int(round((new_width - crop) / 2.0))
    pixels = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(spec["mean"], dtype=np.float32)) / np.asarray(spec["std"], dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def read_manifest(folder: str | Path) -> dict:
    """``bundle.json`` of ``folder``; :class:`BundleError` when it is missing or not a bundle."""
    path = Path(folder) / BUNDLE_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BundleError(f"{folder} is not a bundle: cannot read {path.name} ({error}). Export one with "
                          "`python -m tlhelpers.finetune ... --export DIR`.") from None
    for key in ("classes", "preprocessing", "files"):
        if key not in manifest:
            raise BundleError(f"{path} has no {key!r}; it was not written by tlhelpers' export")
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(folder: str | Path, manifest: dict) -> None:
    """Every file ``bundle.json`` lists is there and has the sha256 it records; :class:`BundleError`
    naming the first file that is missing or differs (a partial copy, a damaged download, an edit)."""
    folder = Path(folder)
    for entry in manifest["files"].values():
        path = folder / entry["name"]
        if not path.is_file():
            raise BundleError(f"{folder} is incomplete: {entry['name']} is missing. Copy the whole bundle folder "
                              "or export it again.")
        if _sha256(path) != entry["sha256"]:
            raise BundleError(f"{path} does not match the sha256 in {BUNDLE_FILE}: it was changed or damaged "
                              "after export. Copy it again from the original bundle or export it again.")


class Predictor:
    """The bundle's model behind one call: ``logits = predictor(batch)`` on a (N, 3, H, W) float32 array."""

    def __init__(self, folder: str | Path, runtime: str = "pt2"):
        if runtime not in RUNTIMES:
            raise BundleError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.folder, self.runtime = Path(folder), runtime
        self.manifest = read_manifest(folder)
        verify(folder, self.manifest)
        self.classes = list(self.manifest["classes"])
        path = self.folder / self.manifest["files"][f"model.{runtime}"]["name"]
        if runtime == "pt2":
            import torch  # only here: the ONNX path runs without torch

            self._torch = torch
            self._module = torch.export.load(str(path)).module()
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            # No busy-waiting between calls: spinning threads would take the CPU from whatever
            # runs next in this process (and from other processes on a shared machine).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self._input = self._session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.runtime == "pt2":
            with self._torch.inference_mode():
                return self._module(self._torch.from_numpy(batch)).numpy()
        return self._session.run(None, {self._input: batch})[0]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def predict_files(predictor: Predictor, paths: list[str], k: int = 3,
                  batch_size: int = BATCH) -> tuple[list[dict], list[str]]:
    """Top-``k`` per readable image, and one error line per unreadable one (the rest still run).

    Images are read, preprocessed and predicted ``batch_size`` at a time, so memory holds one
    batch whatever the number of files; results keep the order of ``paths``.
    """
    results, errors = [], []
    for start in range(0, len(paths), batch_size):
        inputs, readable = [], []
        for path in paths[start:start + batch_size]:
            try:
                with Image.open(path) as image:
                    inputs.append(preprocess(image, predictor.manifest["preprocessing"]))
                readable.append(path)
            except (OSError, ValueError, SyntaxError) as error:   # missing, not an image, truncated
                errors.append(f"{path}: cannot read this image ({type(error).__name__}: {error})")
        if not inputs:
            continue
        logits = predictor(np.stack(inputs))
        for path, row, probs in zip(readable, logits, softmax(logits), strict=True):
            top = np.argsort(-probs, kind="stable")[:min(k, len(predictor.classes))]
            results.append({"image": path, "top": [[predictor.classes[i], float(probs[i])] for i in top],
                            "logits": [float(v) for v in row]})
    return results, errors


def parser(bundle_positional: bool = False) -> argparse.ArgumentParser:
    """The command line: ``BUNDLE IMAGE...`` (``tlhelpers-predict``) or ``IMAGE... [--bundle DIR]``
    (a bundle's own ``predict.py``, whose bundle is the folder it sits in). Options go anywhere."""
    prog = "tlhelpers-predict" if bundle_positional else "predict"
    p = argparse.ArgumentParser(prog=prog, description="Top-k classes for image files, from an exported bundle.")
    if bundle_positional:
        p.add_argument("bundle", type=Path, help="the bundle folder (written by --export or bundle.export)")
    else:
        p.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent,
                       help="the bundle folder (default: the folder this script is in)")
    p.add_argument("images", nargs="+", help="image files (any format and mode Pillow reads)")
    p.add_argument("--runtime", choices=RUNTIMES, default="pt2", help="pt2 needs torch; onnx needs onnxruntime")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON line per image, logits included")
    return p


def main(argv: list[str] | None = None, bundle_positional: bool = False) -> int:
    """The command line (see :func:`parser`); ``bundle_positional`` for ``tlhelpers-predict``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(bundle_positional).parse_intermixed_args(argv)
    if args.top_k < 1:
        print(f"error: --top-k must be a positive integer, got {args.top_k}", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(args.bundle, args.runtime)
    except (BundleError, KeyError, OSError, ImportError, RuntimeError) as error:
        print(f"error: {args.bundle}: {type(error).__name__}: {error}".splitlines()[0], file=sys.stderr)
        return 2
    results, errors = predict_files(predictor, args.images, args.top_k)
    for result in results:
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{result['image']}: " + ", ".join(f"{name} {p:.3f}" for name, p in result["top"]))
    for line in errors:
        print(line, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
