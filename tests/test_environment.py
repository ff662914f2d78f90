"""The environment is reproducible: every requirement has the exact version CI passed with."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

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


def _requirements() -> set[str]:
    """Every distribution pyproject.toml asks for: the core dependencies and every extra's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {Requirement(text).name.lower().replace("_", "-") for text in texts} - {"tlhelpers"}


def test_requirements_txt_installs_the_project_with_every_extra():
    """pyproject.toml is the one list; requirements.txt only installs the project with its extras."""
    extras = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line] == [f"-e .[{','.join(extras)}]"]


def test_every_requirement_is_pinned_in_the_constraints():
    pins = _names(ROOT / "constraints.txt", pinned=True)
    missing = sorted(_requirements() - set(pins))
    assert not missing, f"not in constraints.txt: {missing}; run `make lock`"


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="only the course's .venv (make setup) is built from constraints.txt")
def test_the_course_environment_matches_the_constraints():
    pins = _names(ROOT / "constraints.txt", pinned=True)
    for name in sorted(_requirements()):
        assert metadata.version(name) == pins[name], f"{name} {metadata.version(name)} installed, {pins[name]} pinned"
