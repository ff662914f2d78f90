"""tlhelpers.data: datasets by name from real files, seeded few-shot subsets, sample photos, and
clear errors (with nothing half-written) when data is missing or broken.

Fashion-MNIST comes from the course's data folder (``make setup`` fills it) or from the Debian
package ``dataset-fashion-mnist``; only the network (torchvision's download, the ants/bees zip)
is faked.
"""

from __future__ import annotations

import collections
import gzip
import io
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tlhelpers import assets, data

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
RAW_FILES = sorted(f"FashionMNIST/raw/{name}" for name in data.FASHION_MNIST_FILES)
SMALL = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms(crop_size=64, resize_size=64)


@pytest.fixture(scope="module")
def debian_gz() -> Path:
    folder = data.DEBIAN_FASHION_MNIST
    if not all((folder / f"{name}.gz").is_file() for name in data.FASHION_MNIST_FILES):
        pytest.fail(f"{folder} lacks Fashion-MNIST: `apt-get install dataset-fashion-mnist` (.ci/run does)")
    return folder


@pytest.fixture(scope="module")
def fashion_train():
    return data.load_dataset("fashion-mnist", "train")


def no_debian_package(tmp_path, monkeypatch) -> Path:
    empty = tmp_path / "no-debian-package"
    empty.mkdir()
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", empty)
    return empty


# --------------------------------------------------------------------------- fashion-mnist

def test_fashion_mnist_both_splits(fashion_train):
    val = data.load_dataset("fashion-mnist", "val")
    assert (len(fashion_train), len(val)) == (60_000, 10_000)
    assert len(data.load_dataset("fashion-mnist", "test")) == 10_000  # "test" is "val"
    for dataset, per_class in ((fashion_train, 6000), (val, 1000)):
        assert dataset.classes == FASHION_CLASSES
        assert collections.Counter(dataset.targets) == {c: per_class for c in range(10)}

    image, label = fashion_train[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (28, 28)
    assert label == 9  # the first training image is an ankle boot
    pixels = np.asarray(image)
    raw = torchvision.datasets.FashionMNIST(str(data.data_dir()), train=True).data[0].numpy()
    assert (pixels == raw[..., None]).all()  # gray copied into R, G and B


def test_a_transform_gives_tensors_at_the_size_it_asks_for(fashion_train):
    dataset = data.load_dataset("fashion-mnist", "val", transform=SMALL)
    image, label = dataset[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert torch.allclose(image[0] * 0.229 + 0.485, image[1] * 0.224 + 0.456, atol=1e-5)  # still gray
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch[0].shape == (4, 3, 64, 64) and batch[1].shape == (4,)


def test_fashion_mnist_from_the_debian_package_into_an_empty_data_folder(isolated_data_dir, debian_gz,
                                                                         files_under):
    dataset = data.load_dataset("fashion-mnist", "val", per_class=2)
    assert len(dataset) == 20 and dataset[0][0].size == (28, 28)
    assert files_under(isolated_data_dir) == RAW_FILES  # no staging or partial files left
    raw = data.fashion_mnist_raw_dir()
    for name, sha in data.FASHION_MNIST_FILES.items():
        assert assets.sha256_of(raw / name) == sha


def _corrupt(kind: str, folder: Path, debian_gz: Path) -> str:
    """A copy of the Debian files with one broken; returns the broken file's name."""
    for name in data.FASHION_MNIST_FILES:
        os.symlink(debian_gz / f"{name}.gz", folder / f"{name}.gz")
    if kind == "wrong content":  # a valid gzip of other bytes; the last file, so 3 good ones come first
        name = "t10k-labels-idx1-ubyte"
        raw = gzip.decompress((debian_gz / f"{name}.gz").read_bytes())
        broken = gzip.compress(raw[:-1] + bytes([raw[-1] ^ 1]))
    else:
        name = "train-labels-idx1-ubyte"
        good = (debian_gz / f"{name}.gz").read_bytes()
        if kind == "truncated":
            broken = good[: len(good) // 2]
        else:  # a flipped bit inside the deflate stream
            broken = bytearray(good)
            broken[len(good) // 2] ^= 0x10
            broken = bytes(broken)
    (folder / f"{name}.gz").unlink()
    (folder / f"{name}.gz").write_bytes(broken)
    return name


@pytest.mark.parametrize("kind", ["wrong content", "truncated", "flipped bit"])
def test_broken_debian_files_are_refused_and_leave_nothing(kind, isolated_data_dir, debian_gz, tmp_path,
                                                           monkeypatch, files_under):
    source = tmp_path / "debian-copy"
    source.mkdir()
    broken = _corrupt(kind, source, debian_gz)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", source)

    with pytest.raises(data.DatasetUnavailableError) as caught:
        data.load_dataset("fashion-mnist", "train")
    message = str(caught.value)
    assert re.search(re.escape(f"{source}: ") + r"\w+: " + re.escape(f"{source / broken}.gz"), message)
    if kind == "wrong content":
        assert f"not Fashion-MNIST's {broken}" in message
    else:
        assert "not a readable gzip file" in message
    assert not isolated_data_dir.exists() or files_under(isolated_data_dir) == []


def test_fashion_mnist_missing_offline_names_every_source_and_the_fix(isolated_data_dir, tmp_path,
                                                                      monkeypatch):
    empty = no_debian_package(tmp_path, monkeypatch)
    with pytest.raises(data.DatasetUnavailableError) as caught:
        data.load_dataset("fashion-mnist", "train")
    assert isinstance(caught.value, assets.AssetError)
    message = str(caught.value)
    raw = isolated_data_dir / "FashionMNIST" / "raw"
    assert f"{raw} (not there)" in message
    assert re.search(re.escape(f"{empty}: ") + r"\w+: " + re.escape(f"{empty / 'train-images-idx3-ubyte.gz'} is missing"),
                     message)
    assert "torchvision's download: RuntimeError: Error downloading train-images-idx3-ubyte.gz" in message
    assert "apt-get install dataset-fashion-mnist" in message and str(raw) in message
    assert "digits" in message
    assert not isolated_data_dir.exists()  # not even an empty folder


def test_a_partial_torchvision_download_leaves_nothing(isolated_data_dir, tmp_path, monkeypatch, debian_gz,
                                                       flaky_urlopen, files_under):
    no_debian_package(tmp_path, monkeypatch)
    start = (debian_gz / "train-images-idx3-ubyte.gz").read_bytes()[:100_000]
    urls = flaky_urlopen(lambda url: start)
    with pytest.raises(data.DatasetUnavailableError, match="torchvision's download: ConnectionResetError"):
        data.prepare_fashion_mnist()
    assert any(url.endswith("train-images-idx3-ubyte.gz") for url in urls)  # it really tried
    assert not isolated_data_dir.exists() or files_under(isolated_data_dir) == []


def test_ready_means_all_four_files_at_full_size(isolated_data_dir):
    raw = isolated_data_dir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, size in data.FASHION_MNIST_SIZES.items():
        with open(raw / name, "wb") as handle:
            handle.truncate(size)  # sparse: no real bytes written
    assert data.fashion_mnist_ready()
    os.truncate(raw / "train-images-idx3-ubyte", 1000)  # a copy that was cut short
    assert not data.fashion_mnist_ready()


# --------------------------------------------------------------------------- digits

def test_digits_is_always_there():
    train, val = data.load_dataset("digits", "train"), data.load_dataset("digits", "val")
    assert len(train) + len(val) == 1797 and len(val) == 360
    assert train.classes == [str(d) for d in range(10)]
    image, label = train[0]
    assert image.mode == "RGB" and image.size == (8, 8) and 0 <= label <= 9
    assert max(np.asarray(image).max() for image, _ in (train[i] for i in range(50))) == 255
    assert data.load_dataset("digits", "val", transform=SMALL)[0][0].shape == (3, 64, 64)


# --------------------------------------------------------------------------- imagefolder

@pytest.fixture
def photo_tree(tmp_path, sample_photos) -> Path:
    """root/{train,val}/{cat,coffee}/*.png from real photos, one of them grayscale, plus a README."""
    root = tmp_path / "photos"
    for split, count in (("train", 3), ("val", 2)):
        for label, photo in (("cat", sample_photos["chelsea"]), ("coffee", sample_photos["coffee"])):
            folder = root / split / label
            folder.mkdir(parents=True)
            for k in range(count):
                image = photo.resize((40 + 8 * k, 32))
                (image.convert("L") if k == 1 else image).save(folder / f"{label}{k}.png")
    (root / "train" / "cat" / "README.txt").write_text("not an image")
    return root


def test_imagefolder_reads_a_users_tree(photo_tree, recwarn):
    train = data.load_dataset("imagefolder", "train", root=photo_tree)
    assert train.classes == ["cat", "coffee"] and len(train) == 6
    assert collections.Counter(train.targets) == {0: 3, 1: 3}
    assert all(train[i][0].mode == "RGB" for i in range(len(train)))  # the grayscale PNG too
    assert not recwarn.list  # a README is not an image, not a warning
    val = data.load_dataset("imagefolder", "val", root=photo_tree, transform=SMALL)
    assert len(val) == 4 and val[0][0].shape == (3, 64, 64)
    again = pickle.loads(pickle.dumps(val))  # DataLoader workers that spawn must pickle it
    assert torch.equal(again[3][0], val[3][0])


def test_an_unreadable_image_is_skipped_with_a_warning_naming_it(photo_tree):
    broken = photo_tree / "train" / "coffee" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.warns(UserWarning, match=f"Skipping unreadable image {broken}"):
        train = data.load_dataset("imagefolder", "train", root=photo_tree)
    assert len(train) == 6 and str(broken) not in [path for path, _ in train.samples]


def test_a_folder_without_readable_images_is_a_clear_error(tmp_path):
    folder = tmp_path / "mine" / "train" / "cat"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="a.jpg"), pytest.raises(FileNotFoundError) as caught:
        data.load_dataset("imagefolder", "train", root=tmp_path / "mine")
    message = str(caught.value)
    assert f"No readable images in {tmp_path / 'mine' / 'train'}" in message and "cat" in message
    assert "at least one readable image" in message


def test_an_imagefolder_with_no_class_folders_is_a_clear_error(tmp_path):
    (tmp_path / "mine" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No readable images in .*<class>"):
        data.load_dataset("imagefolder", "train", root=tmp_path / "mine")


def test_a_missing_split_folder_is_a_clear_error(photo_tree):
    shutil.rmtree(photo_tree / "val")
    with pytest.raises(FileNotFoundError) as caught:
        data.load_dataset("imagefolder", "val", root=photo_tree)
    assert f"{photo_tree / 'val'} does not exist" in str(caught.value)
    assert "root/train/<class>/*.jpg" in str(caught.value)


def test_imagefolder_needs_a_root():
    with pytest.raises(ValueError, match="needs root="):
        data.load_dataset("imagefolder", "train")


# --------------------------------------------------------------------------- hymenoptera

def test_hymenoptera_offline_is_a_clear_error_and_leaves_nothing(isolated_data_dir):
    with pytest.raises(data.DatasetUnavailableError) as caught:
        data.load_dataset("hymenoptera", "train")
    message = str(caught.value)
    assert f"{isolated_data_dir / 'hymenoptera_data'} (not there)" in message
    assert f"download {data.HYMENOPTERA_URL}: URLError" in message
    assert "'fashion-mnist' or 'digits'" in message and "'imagefolder'" in message
    assert not isolated_data_dir.exists()


def _zip_of(tree: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for path in sorted(tree.rglob("*")):
            zipped.write(path, Path("hymenoptera_data") / path.relative_to(tree))
    return buffer.getvalue()


def test_hymenoptera_partial_download_leaves_nothing(isolated_data_dir, photo_tree, flaky_urlopen,
                                                     files_under):
    archive = _zip_of(photo_tree)
    urls = flaky_urlopen(lambda url: archive[: len(archive) // 2])
    with pytest.raises(data.DatasetUnavailableError, match="ConnectionResetError"):
        data.load_dataset("hymenoptera", "train")
    assert urls == [data.HYMENOPTERA_URL]
    assert files_under(isolated_data_dir) == []


def test_hymenoptera_download_unpacks_into_the_imagefolder_layout(isolated_data_dir, photo_tree, monkeypatch):
    import hashlib
    import urllib.request

    archive = _zip_of(photo_tree)
    monkeypatch.setattr(data, "HYMENOPTERA_SHA256", hashlib.sha256(archive).hexdigest())  # our stand-in zip
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(archive))
    train = data.load_dataset("hymenoptera", "train")
    assert train.classes == ["cat", "coffee"] and len(train) == 6
    assert (isolated_data_dir / "hymenoptera_data" / "val" / "coffee" / "coffee1.png").is_file()
    assert [p.name for p in isolated_data_dir.iterdir()] == ["hymenoptera_data"]  # no archive, no temp


@pytest.mark.parametrize("payload", ["a valid zip", "an HTML page"])
def test_a_hymenoptera_download_with_another_checksum_leaves_nothing(payload, isolated_data_dir, photo_tree,
                                                                     monkeypatch, files_under):
    """A complete download that is not the published file (a proxy's page, a changed zip) is refused."""
    import urllib.request

    body = _zip_of(photo_tree) if payload == "a valid zip" else b"<html>sign in to the network</html>"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(body))
    with pytest.raises(data.DatasetUnavailableError, match=f"sha256 .* not the published {data.HYMENOPTERA_SHA256}"):
        data.load_dataset("hymenoptera", "train")
    assert files_under(isolated_data_dir) == []


# --------------------------------------------------------------------------- few-shot

@pytest.mark.parametrize("name", ["digits", "fashion-mnist"])
def test_few_shot_subsets_are_seeded_and_stratified(name, fashion_train):
    full = fashion_train if name == "fashion-mnist" else data.load_dataset(name, "train")
    subset = data.load_dataset(name, "train", per_class=7, seed=3)
    assert len(subset) == 70 and subset.classes == full.classes
    assert collections.Counter(subset.targets) == {c: 7 for c in range(10)}
    assert subset.targets == [full.targets[i] for i in subset.indices]
    assert list(subset.indices) == sorted(set(subset.indices))
    assert np.array_equal(np.asarray(subset[5][0]), np.asarray(full[subset.indices[5]][0]))

    assert data.load_dataset(name, "train", per_class=7, seed=3).indices == subset.indices
    other = data.load_dataset(name, "train", per_class=7, seed=4).indices
    assert other != subset.indices and len(other) == 70


def test_few_shot_on_an_imagefolder(photo_tree):
    subset = data.load_dataset("imagefolder", "train", root=photo_tree, per_class=2, seed=1)
    assert collections.Counter(subset.targets) == {0: 2, 1: 2}


@pytest.mark.parametrize("per_class, message", [
    (1000, "digits train: class '8' has only 139 examples; per_class=1000 is too many"),
    (0, "per_class must be a positive integer or None, got 0"),
    (-5, "got -5"),
    (2.5, "got 2.5"),
    (True, "got True"),
])
def test_bad_per_class_is_refused(per_class, message):
    with pytest.raises(ValueError, match=message):
        data.load_dataset("digits", "train", per_class=per_class)


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="split must be one of .*'training'"):
        data.load_dataset("digits", "training")
    with pytest.raises(ValueError, match="Unknown dataset 'mnist'; choose one of fashion-mnist, digits"):
        data.load_dataset("mnist", "train")


# --------------------------------------------------------------------------- sample photos

def test_sample_photos_are_seven_real_rgb_photos(sample_photos):
    assert sorted(sample_photos) == sorted(
        ["chelsea", "coffee", "astronaut", "rocket", "china", "flower", "grace_hopper"])
    for name, photo in sample_photos.items():
        assert isinstance(photo, Image.Image) and photo.mode == "RGB", name
        assert min(photo.size) >= 300, name
        assert np.asarray(photo).std() > 20, name  # a real picture, not a blank
    assert SMALL(sample_photos["astronaut"]).shape == (3, 64, 64)


def test_a_truncated_jpeg_is_skipped_with_a_warning_naming_it(photo_tree, sample_photos):
    """Image.verify() passes a truncated JPEG (it reads only the header); decoding it fails, and
    used to fail in the middle of an epoch. Scanning now decodes every image."""
    whole = photo_tree / "whole.jpg"
    sample_photos["chelsea"].save(whole, quality=90)
    truncated = photo_tree / "train" / "cat" / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    with Image.open(truncated) as image:
        image.verify()  # the old check lets it through
    with pytest.warns(UserWarning, match=f"Skipping unreadable image {truncated}.*truncated"):
        train = data.load_dataset("imagefolder", "train", root=photo_tree, transform=SMALL)
    assert str(truncated) not in [path for path, _ in train.samples]
    loader = torch.utils.data.DataLoader(train, batch_size=4)
    assert sum(len(labels) for _, labels in loader) == 6  # a whole epoch runs


def test_at_most_adapts_to_the_smallest_class_and_says_so(photo_tree, capsys):
    train = data.load_dataset("imagefolder", "train", per_class=30, root=photo_tree, at_most=True)
    assert len(train) == 6 and collections.Counter(train.targets) == {0: 3, 1: 3}
    assert "note: imagefolder train: class 'cat' has only 3 examples, so 3 per class are used instead of 30" \
        in capsys.readouterr().out
    assert len(data.load_dataset("imagefolder", "train", per_class=2, root=photo_tree, at_most=True)) == 4
    assert capsys.readouterr().out == ""


def test_too_many_per_class_names_the_split_the_class_and_the_count(photo_tree):
    with pytest.raises(ValueError, match="imagefolder val: class 'cat' has only 2 examples; per_class=5"):
        data.load_dataset("imagefolder", "val", per_class=5, root=photo_tree)


def test_train_and_val_must_list_the_same_classes(photo_tree):
    """Otherwise label 1 would mean 'coffee' in one split and another class in the other."""
    (photo_tree / "train" / "dog").mkdir()
    (photo_tree / "train" / "cat" / "cat0.png").rename(photo_tree / "train" / "dog" / "dog0.png")
    with pytest.raises(ValueError, match=r"Only in train: \['dog'\]; only in val: none"):
        data.load_dataset("imagefolder", "val", root=photo_tree)


def test_data_dir_is_configurable_and_never_site_packages(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.delenv("TLHELPERS_DATA", raising=False)
    assert data.data_dir() == Path(data.__file__).resolve().parents[1] / "data"     # the source checkout
    monkeypatch.setenv("TLHELPERS_DATA", str(tmp_path / "mine"))
    assert data.data_dir() == tmp_path / "mine"
    monkeypatch.delenv("TLHELPERS_DATA")
    installed = tmp_path / "lib" / "python3.11" / "site-packages" / "tlhelpers" / "data.py"
    installed.parent.mkdir(parents=True)
    (installed.parents[1] / "pyproject.toml").write_text("")    # even a stray pyproject there does not count
    monkeypatch.setattr(data, "__file__", str(installed))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.data_dir() == tmp_path / "cache" / "tlhelpers"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.data_dir() == Path.home() / ".cache" / "tlhelpers"
