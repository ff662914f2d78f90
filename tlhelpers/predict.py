"""``python -m tlhelpers.predict BUNDLE IMAGE...``: top-k classes for image files from an exported bundle.

The work is done by :mod:`tlhelpers.serving`, the same file every bundle carries as its own
``predict.py``; this entry point takes the bundle folder as its first positional argument.
Options, anywhere: ``--runtime pt2|onnx``, ``--top-k K``, ``--json``.
"""

from __future__ import annotations

from tlhelpers.serving import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv, bundle_positional=True)


if __name__ == "__main__":
    raise SystemExit(main())
