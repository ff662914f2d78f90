"""The environment is reproducible: every requirement has the exact version CI passed with."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _names(path: Path, pinned: bool) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = re.match(r"([A-Za-z0-9_.\-]+)\s*(==\s*(\S+))?", line)
        found[match.group(1).lower().replace("_", "-")] = match.group(3) or ""
        assert not pinned or match.group(3), f"{path.name}: {line!r} is not pinned with =="
    return found


def test_every_requirement_is_pinned_in_the_constraints():
    wanted = _names(ROOT / "requirements.txt", pinned=False)
    pins = _names(ROOT / "constraints.txt", pinned=True)
    missing = sorted(set(wanted) - set(pins))
    assert not missing, f"not in constraints.txt: {missing}; run `make lock`"


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="only the course's .venv (make setup) is built from constraints.txt")
def test_the_course_environment_matches_the_constraints():
    pins = _names(ROOT / "constraints.txt", pinned=True)
    for name in _names(ROOT / "requirements.txt", pinned=False):
        assert metadata.version(name) == pins[name], f"{name} {metadata.version(name)} installed, {pins[name]} pinned"
