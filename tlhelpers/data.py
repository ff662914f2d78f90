"""Datasets by name, offline first, with seeded few-shot subsets and real sample photos.

``load_dataset(name, split)`` returns a torch ``Dataset`` of ``(image, label)`` pairs whose
images are RGB PIL images (grayscale sets are converted to 3 channels), so any torchvision
weights' ``transforms()`` applies, at whatever resolution that transform asks for. Every
dataset has ``.classes`` and ``.targets``.

Sources, and where each one comes from:

* ``fashion-mnist`` (the default teaching set): ``data/FashionMNIST/raw`` -> the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), decompressed into
  torchvision's layout and content-checked -> torchvision's download.
* ``digits``: scikit-learn's 8x8 handwritten digits, shipped inside scikit-learn.
* ``imagefolder``: your own ``root/{train,val}/<class>/*.jpg`` tree.
* ``hymenoptera``: the PyTorch tutorial's ants/bees photos, downloaded when online.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from tlhelpers.checks import integer
from tlhelpers.files import AssetError, atomic_write, first_source, network_timeout, sha256_of, socket_timeout
from tlhelpers.serving import to_rgb  # one conversion for training and serving

#: The per-channel mean and std every torchvision ImageNet model normalises its inputs with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SPLITS = ("train", "val")
DATASETS = ("fashion-mnist", "digits", "imagefolder", "hymenoptera")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
#: The zip's published sha256 (pytorch/tutorials, .jenkins/download_data.py line 76, commit
#: 2286ae1): the tutorials' own downloader checks it. No md5 is published for this file.
HYMENOPTERA_SHA256 = "fbc41b31d544714d18dd1230b1e2b455e1557766e13e67f9f5a7a23af7c02209"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: sha256 of the decompressed IDX files (identical to torchvision's after gunzip).
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


class DatasetUnavailableError(AssetError):
    """A dataset is not on disk and could not be fetched; the message lists what was tried."""



class DatasetError(ValueError):
    """The data cannot serve the request: an unknown dataset, a split too small for the sizes asked,
    an image folder laid out wrongly. The message says what to change. Callers that turn data
    problems into usage errors (the command line) catch this, not every ValueError."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset folder, or the images in it, are not where they must be."""

def data_dir() -> Path:
    """The course's data folder, first of:

    1. ``$TLHELPERS_DATA``, when set;
    2. ``data/`` of the source checkout this package runs from (the course's editable install);
    3. the user cache folder, ``$XDG_CACHE_HOME/tlhelpers`` or ``~/.cache/tlhelpers``, so an
       installed package never writes into site-packages.
    """
    configured = os.environ.get("TLHELPERS_DATA")
    if configured:
        return Path(configured)
    project = Path(__file__).resolve().parents[1]
    if (project / "pyproject.toml").is_file() and "site-packages" not in project.parts:
        return project / "data"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tlhelpers"


# --------------------------------------------------------------------------- Fashion-MNIST

def fashion_mnist_raw_dir() -> Path:
    return data_dir() / "FashionMNIST" / "raw"


#: Sizes of the decompressed IDX files: a cheap check that catches truncated copies.
FASHION_MNIST_SIZES = {
    "train-images-idx3-ubyte": 47040016,
    "train-labels-idx1-ubyte": 60008,
    "t10k-images-idx3-ubyte": 7840016,
    "t10k-labels-idx1-ubyte": 10008,
}


def fashion_mnist_ready() -> bool:
    """True when ``data/FashionMNIST/raw`` holds the four IDX files at their full size."""
    raw = fashion_mnist_raw_dir()
    return all((raw / name).is_file() and (raw / name).stat().st_size == size
               for name, size in FASHION_MNIST_SIZES.items())


def _install_checked(sources: dict[str, Path], write: Callable[[Path, Path], None]) -> None:
    """Write the four IDX files into the data folder, all of them or none.

    ``sources`` maps each file name to where it comes from; ``write(source, target)`` puts its
    content at ``target``. Every file is written to a temporary name and its sha256 checked;
    only when all four are good are they renamed into place (:func:`tlhelpers.files.atomic_write`,
    committed together).
    """
    raw = fashion_mnist_raw_dir()
    with contextlib.ExitStack() as stack:
        for name, source in sources.items():
            staging = stack.enter_context(atomic_write(raw / name))
            write(source, staging)
            if sha256_of(staging) != FASHION_MNIST_FILES[name]:
                raise ValueError(f"{source} holds content that is not Fashion-MNIST's {name} "
                                 "(sha256 differs)")


def _gunzip(source: Path, target: Path) -> None:
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing")
    try:
        with gzip.open(source, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{source} is not a readable gzip file "
                         f"({type(error).__name__}: {error})") from None


def _staging_dir() -> tempfile.TemporaryDirectory:
    """A temporary folder inside the data folder (same file system, so moves are atomic)."""
    data_dir().mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=data_dir(), prefix=".staging-")


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove folders we created (deepest first) if they stayed empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def prepare_fashion_mnist(sources: Sequence[Path] | None = None, download: bool = True) -> Path:
    """Make sure ``data/FashionMNIST/raw`` holds the dataset; return that folder.

    Tries the data folder, then each folder of ``.gz`` files in ``sources`` (by default
    :data:`DEBIAN_FASHION_MNIST`, the Debian package's), then torchvision's download. Every
    file's decompressed content is checked (sha256) and the four files are moved into place
    only when all of them are good, so a failure leaves nothing half-done behind. Raises
    :class:`DatasetUnavailableError` naming every source tried and how to get the data.
    """
    raw = fashion_mnist_raw_dir()
    if fashion_mnist_ready():
        return raw
    sources = (DEBIAN_FASHION_MNIST,) if sources is None else sources
    tried = [f"{raw} ({'incomplete' if raw.exists() else 'not there'})"]
    created = _missing_dirs(raw)

    def from_gz(source: Path) -> Path:
        _install_checked({name: Path(source) / f"{name}.gz" for name in FASHION_MNIST_FILES}, _gunzip)
        return raw

    def torchvision_download() -> Path:
        import torchvision

        with _staging_dir() as staging, socket_timeout():
            torchvision.datasets.FashionMNIST(staging, train=True, download=True)
            staging_raw = Path(staging) / "FashionMNIST" / "raw"
            _install_checked({name: staging_raw / name for name in FASHION_MNIST_FILES}, shutil.copyfile)
        return raw

    def give_up(tried: list[str]) -> DatasetUnavailableError:
        _remove_empty(created)
        return DatasetUnavailableError(
            "Fashion-MNIST is not available. Tried:\n  - " + "\n  - ".join(tried) +
            "\nTo fix it: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or run once "
            "with internet, or copy the four *-ubyte files into " + str(raw) +
            ". The `digits` dataset needs no download and works everywhere.")

    attempts = [(str(source), lambda source=source: from_gz(source)) for source in sources]
    if download:
        attempts.append(("torchvision's download", torchvision_download))
    return first_source(attempts, tried=tried, give_up=give_up)


class _GrayToRGB(Dataset):
    """Wrap a dataset of uint8 grayscale tensors as RGB PIL images plus labels."""

    def __init__(self, images: torch.Tensor, targets: Sequence[int], classes: list[str],
                 transform: Callable | None = None):
        self.images = images
        self.targets = list(int(t) for t in targets)
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index].numpy(), mode="L").convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def _fashion_mnist(split: str, transform: Callable | None) -> Dataset:
    import torchvision

    prepare_fashion_mnist()
    base = torchvision.datasets.FashionMNIST(str(data_dir()), train=split == "train", download=False)
    return _GrayToRGB(base.data, base.targets.tolist(), list(base.classes), transform)


def _digits(split: str, transform: Callable | None) -> Dataset:
    """scikit-learn's digits: a fixed stratified 80/20 split, 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy((bunch.images * (255.0 / 16.0)).round().astype(np.uint8))
    index = np.arange(len(bunch.target))
    train_idx, val_idx = train_test_split(index, test_size=0.2, random_state=0, stratify=bunch.target)
    chosen = train_idx if split == "train" else val_idx
    classes = [str(c) for c in bunch.target_names]
    return _GrayToRGB(images[chosen], bunch.target[chosen].tolist(), classes, transform)


# --------------------------------------------------------------------------- ImageFolder

def _readable(path: str) -> bool:
    """Decode the whole image once. ``Image.verify()`` only checks the header and passes a
    truncated JPEG, which would then fail in the middle of an epoch."""
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception as error:
        warnings.warn(f"Skipping unreadable image {path} ({type(error).__name__}: {error})", stacklevel=3)
        return False


def _is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS) and _readable(path)


def _load_rgb(path: str) -> Image.Image:
    # A module-level function (not a lambda), so DataLoader workers can pickle the dataset
    # on platforms that spawn them (macOS, Windows).
    with Image.open(path) as image:
        return to_rgb(image)




def _image_folder(root: Path, split: str, transform: Callable | None) -> Dataset:
    import torchvision

    folder = Path(root) / split
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"{folder} does not exist. An image folder needs root/train/<class>/*.jpg and "
            f"root/val/<class>/*.jpg; pass root= the folder that holds train/ and val/."
        )
    _check_same_classes(Path(root))
    try:
        dataset = torchvision.datasets.ImageFolder(
            str(folder), transform=transform, is_valid_file=_is_image_file, loader=_load_rgb,
        )
    except FileNotFoundError as error:
        raise DatasetNotFoundError(
            f"No readable images in {folder} ({error}). Every class needs a folder "
            f"{folder}/<class>/ with at least one readable image ({', '.join(IMAGE_EXTENSIONS)}); "
            f"fix or remove the files warned about above."
        ) from None
    return dataset


def _check_same_classes(root: Path) -> None:
    """train/ and val/ must hold the same class folders, or label 1 would mean another class in each."""
    splits = {split: sorted(p.name for p in (root / split).iterdir() if p.is_dir())
              for split in SPLITS if (root / split).is_dir()}
    if len(splits) == 2 and splits["train"] != splits["val"]:
        only_train = sorted(set(splits["train"]) - set(splits["val"]))
        only_val = sorted(set(splits["val"]) - set(splits["train"]))
        raise DatasetError(
            f"{root}/train and {root}/val must hold the same class folders (labels are given in "
            f"sorted folder order). Only in train: {only_train or 'none'}; only in val: "
            f"{only_val or 'none'}. Add or rename folders so both splits list the same classes.")


def _hymenoptera_root(download: bool = True) -> Path:
    """``data/hymenoptera_data``, downloaded, checked (sha256) and unpacked on first use.

    The archive goes to a temporary folder inside the data folder; only a complete download
    with the published sha256 is unpacked, and the unpacked tree is renamed into place in one
    step, so a failed or wrong download leaves nothing in ``data/``.
    """
    root = data_dir() / "hymenoptera_data"
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root
    tried = [f"{root} (not there)"]
    created = _missing_dirs(data_dir())

    def downloaded() -> Path:
        data_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=data_dir(), prefix=".hymenoptera-") as tmp:
            archive = Path(tmp) / "hymenoptera_data.zip"
            with urllib.request.urlopen(HYMENOPTERA_URL, timeout=network_timeout()) as response, \
                    open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
            digest = sha256_of(archive)
            if digest != HYMENOPTERA_SHA256:
                raise ValueError(f"the downloaded file has sha256 {digest}, not the published "
                                 f"{HYMENOPTERA_SHA256} (a proxy page, or a changed file?)")
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(Path(tmp) / "unpacked")
            os.replace(Path(tmp) / "unpacked" / "hymenoptera_data", root)
        return root

    def give_up(tried: list[str]) -> DatasetUnavailableError:
        _remove_empty(created)
        return DatasetUnavailableError(
            "The ants/bees (hymenoptera) set is not available. Tried:\n  - " + "\n  - ".join(tried) +
            f"\nTo fix it: run once with internet, or unzip {HYMENOPTERA_URL} into {data_dir()}. "
            "Offline, use DATASET='fashion-mnist' or 'digits', or your own photos with 'imagefolder'.")

    attempts = [(f"download {HYMENOPTERA_URL}", downloaded)] if download else []
    return first_source(attempts, tried=tried, give_up=give_up)


# --------------------------------------------------------------------------- public API

def few_shot_indices(targets: Sequence[int], per_class: int, seed: int = 0) -> list[int]:
    """Seeded, stratified choice of ``per_class`` indices per class, in dataset order."""
    per_class = integer(per_class, "per_class", 1, " or None")
    seed = integer(seed, "seed")
    targets_t = torch.as_tensor(list(targets))
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for label in torch.unique(targets_t).tolist():
        members = torch.nonzero(targets_t == label).flatten()
        if len(members) < per_class:
            raise DatasetError(f"class {label} has only {len(members)} examples; per_class={per_class} is too many")
        pick = members[torch.randperm(len(members), generator=generator)[:per_class]]
        chosen.extend(pick.tolist())
    return sorted(chosen)


class FewShot(Subset):
    """A Subset that keeps ``classes`` and ``targets`` so it behaves like the full dataset."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        super().__init__(dataset, list(indices))
        self.classes = dataset.classes
        self.targets = [dataset.targets[i] for i in self.indices]


def load_dataset(name: str, split: str = "train", per_class: int | None = None, seed: int = 0,
                 transform: Callable | None = None, root: str | Path | None = None, *,
                 at_most: bool = False) -> Dataset:
    """Return dataset ``name``'s ``split`` ("train" or "val"), optionally a few-shot subset.

    ``per_class`` keeps that many examples of each class, chosen with ``seed`` (stratified, so
    every class is equally represented). A class with fewer examples is an error naming the
    split, the class and the count, unless ``at_most=True``: then ``per_class`` is an upper
    bound, every class gets as many as the smallest one has, and a note says so. That is what
    the notebooks use, so they run on a learner's small folder. ``transform`` is applied to the
    RGB PIL image, e.g. ``weights.transforms(crop_size=64, resize_size=64)``. ``root`` is the
    folder holding ``train/`` and ``val/`` for ``"imagefolder"``.
    """
    if split == "test":
        split = "val"
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} (or 'test' = 'val'), got {split!r}")
    if name == "fashion-mnist":
        dataset = _fashion_mnist(split, transform)
    elif name == "digits":
        dataset = _digits(split, transform)
    elif name == "imagefolder":
        if root is None:
            raise DatasetError("load_dataset('imagefolder', ...) needs root=<folder with train/ and val/>")
        dataset = _image_folder(Path(root), split, transform)
    elif name == "hymenoptera":
        dataset = _image_folder(_hymenoptera_root(), split, transform)
    else:
        raise DatasetError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if per_class is not None:
        per_class = _check_per_class(dataset, per_class, f"{name} {split}", at_most)
        dataset = FewShot(dataset, few_shot_indices(dataset.targets, per_class, seed))
    return dataset


def _check_per_class(dataset: Dataset, per_class: int, what: str, at_most: bool) -> int:
    """``per_class`` if every class has that many examples; else the smallest count (with a
    printed note) when ``at_most``, else a ValueError naming the class and its count."""
    per_class = integer(per_class, "per_class", 1, " or None")
    counts = np.bincount(np.asarray(dataset.targets, dtype=np.int64), minlength=len(dataset.classes))
    smallest = int(counts.argmin())
    if counts[smallest] >= per_class:
        return per_class
    name, have = dataset.classes[smallest], int(counts[smallest])
    if at_most and have >= 1:
        print(f"note: {what}: class {name!r} has only {have} examples, so {have} per class are used "
              f"instead of {per_class}")
        return have
    raise DatasetError(f"{what}: class {name!r} has only {have} examples; per_class={per_class} is too "
                     "many. Use a smaller per_class, add examples, or at_most=True to use as many as "
                     "the smallest class has.")


def sample_photos() -> dict[str, Image.Image]:
    """Real photos that ship inside packages the course already uses, as RGB PIL images.

    skimage: chelsea (a cat), coffee, astronaut, rocket; scikit-learn: china (a temple),
    flower; matplotlib: grace_hopper. Good for ImageNet inference demos without internet.
    """
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_image

    photos = {name: Image.fromarray(getattr(skimage.data, name)())
              for name in ("chelsea", "coffee", "astronaut", "rocket")}
    photos["china"] = Image.fromarray(load_sample_image("china.jpg"))
    photos["flower"] = Image.fromarray(load_sample_image("flower.jpg"))
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        photos["grace_hopper"] = Image.open(handle).convert("RGB")
    return {name: image.convert("RGB") for name, image in photos.items()}
