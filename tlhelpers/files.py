"""The bottom of the package: file integrity, atomic writes and the asset error types.

Everything that writes a file the course relies on (weights in the hub cache, datasets in
``data/``, checkpoints) writes it through :func:`atomic_write`, so a reader never sees half a
file and a failure leaves nothing behind. This module imports nothing else from tlhelpers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


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
    if any block fails, none of them is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    staging = Path(name)
    try:
        yield staging
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
