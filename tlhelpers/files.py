"""The bottom of the package: file integrity, atomic writes and the asset error types.

Everything that writes a file the course relies on (weights in the hub cache, datasets in
``data/``, checkpoints) writes it through :func:`atomic_write`, so a reader never sees half a
file and a failure leaves nothing behind. This module imports nothing else from tlhelpers.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def network_timeout() -> float:
    """Seconds any network access waits for an answer: ``$TLHELPERS_NETWORK_TIMEOUT`` or 20.

    A firewall that drops packets (instead of refusing them) would otherwise make a download
    wait for ever; with a timeout it fails, and the caller says what it tried and what next.
    """
    value = os.environ.get("TLHELPERS_NETWORK_TIMEOUT", "20")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"TLHELPERS_NETWORK_TIMEOUT must be a positive number of seconds, got {value!r}")
    return seconds


@contextlib.contextmanager
def socket_timeout(seconds: float | None = None) -> Iterator[float]:
    """Give every socket opened inside the block (urllib, torch.hub) a timeout; restore it after."""
    seconds = network_timeout() if seconds is None else seconds
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield seconds
    finally:
        socket.setdefaulttimeout(previous)


#: What a failing source raises: no network, DNS, an HTTP error or a cut connection (OSError,
#: http.client.HTTPException), wrong or truncated content (ValueError, EOFError, a bad archive),
#: a file torch cannot read (RuntimeError, AssetError). A TypeError, NameError or AttributeError
#: is a bug in the course, not a failed source: it propagates with its traceback.
SOURCE_FAILURES: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, RuntimeError,
                                                    http.client.HTTPException, tarfile.TarError,
                                                    zipfile.BadZipFile)


def first_source(sources: Iterable[tuple[str, Callable[[], T]]], *, tried: list[str],
                 give_up: Callable[[list[str]], BaseException],
                 stop_on: tuple[type[BaseException], ...] = ()) -> T:
    """The one way the course fetches an asset: try each source in order, return the first result.

    ``sources`` are (description, attempt) pairs. A failed attempt is recorded in ``tried`` as
    ``"<description>: <ErrorType>: <message>"`` and the next source is tried; an error of a
    ``stop_on`` type ends the search at once (a file with the wrong hash is refused, never
    fallen back from). When every source failed, ``give_up(tried)`` (clean up, then build the
    error that lists what was tried and says what to do) is raised.
    """
    for description, attempt in sources:
        try:
            return attempt()
        except stop_on:
            raise
        except SOURCE_FAILURES as error:
            tried.append(f"{description}: {type(error).__name__}: {error}")
    raise give_up(tried)


class AssetError(RuntimeError):
    """A pretrained asset or dataset is missing or corrupt; the message says what to do next."""


class HashMismatchError(AssetError):
    """A file does not have the hash it must have; it was not loaded."""


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one step.

    Write (and check) the file at the yielded path inside the ``with`` block. If the block
    raises, the temporary file is removed and ``path`` is left as it was (absent, or the old
    complete file). The temporary name is unique per call (``.<name>.<random>.partial``), so
    two processes writing the same file never share a half-written one. Folders are created
    as needed. Several files can be committed together with :class:`contextlib.ExitStack`:
    if any block fails, none of them is replaced. The new file gets the umask's mode (or the
    replaced file's mode), and file and folder are fsynced, so "never half a file" holds across
    a power loss too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    staging = Path(name)
    try:
        yield staging
        # mkstemp creates 0600 files: give the new file the mode an ordinary open() would
        # (0666 less the umask), or keep the mode of the file it replaces, so a shared weights
        # file or dataset stays readable to the other users of a JupyterHub or a container.
        os.chmod(staging, _mode_for(path))
        _fsync(staging)
        os.replace(staging, path)
        _fsync(path.parent)     # the rename itself survives a power loss only once the folder is synced
    finally:
        staging.unlink(missing_ok=True)


def _mode_for(path: Path) -> int:
    """The permission bits ``path`` should get: its current ones, else 0666 less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """This process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)   # elsewhere: set and restore, the only portable way to read it
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk; folders that refuse are skipped."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:   # e.g. folders on Windows cannot be opened
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder next to ``path``; on success it takes ``path``'s place.

    The folder version of :func:`atomic_write`: build every file inside the ``with`` block. If
    the block raises, the staging folder is removed and ``path`` is left exactly as it was. On
    success an existing ``path`` is first moved aside (renamed), the staging folder is renamed
    into place, and only then is the old folder deleted, so at no moment is there half a folder
    at ``path``; if the second rename fails, the old folder is moved back. The new folder gets
    the modes ``mkdir`` would give (0777 less the umask; files 0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    aside = None
    try:
        yield staging
        mask = current_umask()   # mkdtemp's folder is private: give it the modes mkdir would
        for item in staging.rglob("*"):
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)
        staging.chmod(0o777 & ~mask)
        if path.exists():
            aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            aside.rmdir()
            path.rename(aside)
        try:
            staging.rename(path)
        except OSError:
            if aside is not None:
                aside.rename(path)
                aside = None
            raise
        _fsync(path.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
        if aside is not None and aside.exists():
            shutil.rmtree(aside)
