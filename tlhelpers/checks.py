"""One check for "is this an integer?", with one message, used everywhere in tlhelpers.

A learner passes ``per_class=np.int64(20)`` from a NumPy computation as often as ``20``; both
must work everywhere, and ``True``, ``2.5`` or ``"20"`` must be refused everywhere with the same
words. Imports nothing else from tlhelpers.
"""

from __future__ import annotations

import operator


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
