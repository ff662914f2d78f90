"""Fixtures for the real-browser tests: a JupyterLab server, a Voila server, headless chromium.

Everything runs on 127.0.0.1 with an empty token. The browser is Debian's ``/usr/bin/chromium``
driven by Python playwright; browsers are never downloaded. Without chromium the tests skip
with a clear message, unless ``CI`` is set, where a missing browser or playwright is a failure.

Servers run in their own process group and are stopped in ``finally`` blocks (terminate, then
kill), kernels included. JupyterLab gets its own settings and workspace folders with autosave
and the news/update checks off, so a test run never writes into the repository's notebooks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Debian's chromium; ``TLHELPERS_CHROMIUM`` points elsewhere (a distribution that installs it elsewhere).
CHROMIUM = Path(os.environ.get("TLHELPERS_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "test-artifacts"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
SERVER_START_TIMEOUT = 90.0

LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def _missing(message: str) -> None:
    """Skip on a learner's machine; fail under CI (env var ``CI`` set), where nothing may be missing."""
    if os.environ.get("CI"):
        pytest.fail(message + " and CI is set, so this is a failure, not a skip")
    pytest.skip(message)


def _require_chromium() -> None:
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing (Debian package `chromium`; install it with "
                 "`apt-get install chromium`, never download browsers); the browser tests need it")


def _require_playwright() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        _missing(f"Python playwright is not importable ({error}); `pip install -r requirements.txt` "
                 "installs it (the browser itself is Debian's chromium)")


@pytest.fixture(scope="session", autouse=True)
def browser_tools() -> None:
    """Check for chromium and playwright before any server starts (skip, or fail under CI)."""
    _require_chromium()
    _require_playwright()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               JUPYTER_PLATFORM_DIRS="1", PYTHONUNBUFFERED="1")
    env.pop("JUPYTER_TOKEN", None)
    return env


def _wait_until_up(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}:\n"
                               + log.read_text(errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:  # any HTTP answer (even 404) means the server is up
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server did not answer {url} within {SERVER_START_TIMEOUT:.0f} s:\n"
                       + log.read_text(errors="replace")[-3000:])


def _stop(process: subprocess.Popen) -> None:
    """Stop the server's whole process group (the server and its kernels)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def _serve(command: list[str], base: str, probe: str, tmp: Path, name: str) -> Iterator[str]:
    """Start ``command``, wait until ``base + probe`` answers, yield ``base``, always stop it."""
    log = tmp / f"{name}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=_server_env(tmp), stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(process, base + probe, log)
        yield base
    finally:
        _stop(process)
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(log, ARTIFACTS / f"{name}.log")


def _lab(tmp_path_factory, name: str, settings_values: dict) -> Iterator[str]:
    """A JupyterLab server on 127.0.0.1 rooted at the repository, no token, with these user settings."""
    _require_chromium()
    tmp = tmp_path_factory.mktemp(name)
    settings = tmp / "user-settings"
    for relative, values in settings_values.items():
        path = settings / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port = free_port()
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
               f"--ServerApp.root_dir={ROOT}", f"--LabApp.user_settings_dir={settings}",
               f"--LabApp.workspaces_dir={tmp / 'workspaces'}", "--LabApp.news_url=",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    base = f"http://127.0.0.1:{port}"
    yield from _serve(command, base, "/api/status", tmp, name)


@pytest.fixture(scope="session")
def lab_url(tmp_path_factory) -> Iterator[str]:
    """Base URL of a JupyterLab server (light theme) on 127.0.0.1 rooted at the repository, no token."""
    yield from _lab(tmp_path_factory, "jupyterlab", LAB_SETTINGS)


@pytest.fixture(scope="session")
def dark_lab_url(tmp_path_factory) -> Iterator[str]:
    """The same, in JupyterLab's dark theme (its own server: a theme is a user setting)."""
    dark = {**LAB_SETTINGS, "@jupyterlab/apputils-extension/themes.jupyterlab-settings": {"theme": "JupyterLab Dark"}}
    yield from _lab(tmp_path_factory, "jupyterlab-dark", dark)


@pytest.fixture(scope="session")
def voila_url(tmp_path_factory) -> Iterator[str]:
    """Base URL of Voila serving notebooks/simulator.ipynb on 127.0.0.1."""
    _require_chromium()
    voila = Path(sys.executable).with_name("voila")
    if not voila.exists():
        pytest.fail(f"voila is not installed in {Path(sys.executable).parent}; "
                    "`pip install voila` (it is in requirements.txt)")
    tmp = tmp_path_factory.mktemp("voila")
    port = free_port()
    command = [str(voila), "notebooks/simulator.ipynb", "--no-browser", f"--port={port}",
               "--Voila.ip=127.0.0.1", "--Voila.port_retries=0"]
    base = f"http://127.0.0.1:{port}"
    # Probe a static path: asking for the page itself would start a kernel and run the notebook.
    yield from _serve(command, base, "/voila/static/", tmp, "voila")


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory):
    """A headless Debian chromium with a fresh profile, driven by playwright."""
    _require_chromium()
    _require_playwright()
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS,
            viewport={"width": 1400, "height": 2200})  # tall: the whole simulator fits in a screenshot
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context):
    page = browser_context.new_page()
    try:
        yield page
    finally:
        page.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """test-artifacts/ (git-ignored): screenshots, server logs, timings."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
