"""Two checks used everywhere in tlhelpers: "is this an integer?" and "is this optional feature installed?".

A learner passes ``per_class=np.int64(20)`` from a NumPy computation as often as ``20``; both
must work everywhere, and ``True``, ``2.5`` or ``"20"`` must be refused everywhere with the same
words. An optional feature (exporting a bundle, executing notebooks) checks that what it needs
imports before any work starts, and names the extra that installs it (:func:`require`).
Imports nothing else from tlhelpers.
"""

from __future__ import annotations

import importlib.util
import operator
import sys

#: What each extra of pyproject.toml brings, for the features that need it.
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("onnx", "onnxscript", "onnxruntime", "safetensors"),
    "course": ("jupyterlab", "nbclient", "nbformat", "nbconvert", "voila"),
}


class MissingExtra(ImportError):
    """An optional feature's packages are not installed; the message says which extra installs them."""


def _importable(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def require(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtra` unless every package of ``extra`` imports (without importing them)."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; the extras are {sorted(EXTRAS)}")
    missing = [name for name in EXTRAS[extra] if not _importable(name)]
    if missing:
        raise MissingExtra(f"{feature} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                           f"not installed: pip install 'tlhelpers[{extra}]'")


class IntegerError(ValueError, TypeError):
    """A value that had to be an integer (in a range) is not; catchable as ValueError or TypeError."""


def _kind(minimum: int | None) -> str:
    if minimum is None:
        return "an integer"
    return {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")


def integer(value, what: str, minimum: int | None = None, hint: str = "",
            allowed: tuple[int, ...] | None = None) -> int:
    """``value`` as a Python ``int``, or :class:`IntegerError` naming ``what``.

    Python and NumPy integers (and 0-d integer tensors: anything with ``__index__``) are
    accepted; ``bool``, floats (even ``3.0``) and strings are not. ``minimum`` is the smallest
    value allowed, ``allowed`` the only values allowed; ``hint`` is added to the message
    (``" (e.g. len(dataset.classes))"``).
    """
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if allowed is not None:
        if number not in allowed:
            raise IntegerError(f"{what} must be one of {allowed}{hint}, got {value!r}")
    elif number is None or (minimum is not None and number < minimum):
        raise IntegerError(f"{what} must be {_kind(minimum)}{hint}, got {value!r}")
    return number
