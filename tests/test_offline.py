"""`make test` runs with no network at all, in every process; under CI that is not optional.

scripts/offline runs the suite in a network namespace where only loopback is up and sets
TLHELPERS_OFFLINE=1. These tests check the namespace from the outside in: this process, a
subprocess (outside the reach of conftest's in-process guard), and a real notebook kernel.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

OFFLINE = os.environ.get("TLHELPERS_OFFLINE") == "1"
needs_namespace = pytest.mark.skipif(
    not OFFLINE and not os.environ.get("CI"),
    reason="not run through scripts/offline (make test does that); under CI this is a failure")

#: An address on another machine (example.com's); nothing may connect to it.
SOMEWHERE = ("93.184.215.14", 80)


@pytest.mark.skipif(not os.environ.get("CI"), reason="a rule for CI only: elsewhere the suite may run with the network")
def test_ci_runs_the_suite_offline():
    assert OFFLINE, ("under CI the suite must run inside scripts/offline (make test does it); "
                     "TLHELPERS_OFFLINE is not set")


@needs_namespace
def test_only_loopback_exists():
    assert [name for _, name in socket.if_nameindex()] == ["lo"]


@needs_namespace
def test_a_subprocess_cannot_reach_another_machine():
    probe = ("import socket\n"
             f"try:\n    socket.create_connection({SOMEWHERE!r}, timeout=5)\n"
             "except OSError as error:\n    print('refused', error.errno)\n"
             "else:\n    print('CONNECTED')\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("refused"), result.stdout + result.stderr


@needs_namespace
def test_a_notebook_that_downloads_fails_visibly(tmp_path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import urllib.request\n"
        "urllib.request.urlopen('https://download.pytorch.org/models/resnet18-f37072fd.pth', timeout=10)")])
    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError, match="URLError"):
        client.execute()
