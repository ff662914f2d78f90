"""The browser tests' rule for missing tools: skip on a learner's machine, fail under CI.

The checks in tests/ui/conftest.py are called directly with playwright made unimportable or
the chromium path pointing nowhere, with and without ``CI`` set; one pytest run of tests/ui
in a subprocess shows the suite itself fails under CI before any server starts.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _pytest.outcomes import Failed, Skipped

ROOT = Path(__file__).resolve().parents[1]


def ui_conftest(monkeypatch, chromium: str | None = None):
    """tests/ui/conftest.py loaded as a fresh module (it reads the chromium path on import)."""
    if chromium is not None:
        monkeypatch.setenv("TLHELPERS_CHROMIUM", chromium)
    spec = importlib.util.spec_from_file_location("ui_conftest_copy", ROOT / "tests" / "ui" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_ci(monkeypatch, ci: bool) -> None:
    if ci:
        monkeypatch.setenv("CI", "1")
    else:
        monkeypatch.delenv("CI", raising=False)


@pytest.mark.parametrize("ci", [False, True], ids=["learner", "CI"])
def test_missing_playwright(monkeypatch, ci):
    monkeypatch.setitem(sys.modules, "playwright", None)
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)
    set_ci(monkeypatch, ci)
    conftest = ui_conftest(monkeypatch)
    with pytest.raises(Failed if ci else Skipped, match="playwright is not importable"):
        conftest._require_playwright()


@pytest.mark.parametrize("ci", [False, True], ids=["learner", "CI"])
def test_missing_chromium(monkeypatch, ci):
    set_ci(monkeypatch, ci)
    conftest = ui_conftest(monkeypatch, chromium="/nonexistent/chromium")
    expected = "is a failure, not a skip" if ci else "never download browsers"
    with pytest.raises(Failed if ci else Skipped, match=expected):
        conftest._require_chromium()


def test_the_suite_fails_under_ci_before_starting_servers():
    code = ("import sys; sys.modules['playwright'] = None; sys.modules['playwright.sync_api'] = None; "
            "import pytest; sys.exit(pytest.main(['tests/ui', '-q', '-p', 'no:cacheprovider']))")
    env = dict(os.environ, CI="1", OMP_WAIT_POLICY="PASSIVE")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0
    assert "CI is set, so this is a failure, not a skip" in run.stdout
    assert "skipped" not in run.stdout.splitlines()[-1] and "passed" not in run.stdout.splitlines()[-1]
    assert "Serving" not in run.stdout and "jupyterlab.log" not in run.stdout
