"""The static simulator picture: written by ``python -m tlhelpers.simulator snapshot`` with no
widget library at all (ipywidgets and anywidget made unimportable), and shown by the notebook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WITHOUT_WIDGETS = ("import runpy, sys; sys.modules['ipywidgets'] = None; sys.modules['anywidget'] = None; "
                   "sys.argv = ['tlhelpers.simulator', 'snapshot', sys.argv[1]]; "
                   "runpy.run_module('tlhelpers.simulator', run_name='__main__', alter_sys=True)")


def test_snapshot_command_needs_no_widget_library(tmp_path):
    path = tmp_path / "figures" / "snapshot.png"
    run = subprocess.run([sys.executable, "-c", WITHOUT_WIDGETS, str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"wrote {path}" in run.stdout
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_static_fallback_is_in_the_repository_and_the_notebook():
    png = ROOT / "notebooks" / "figures" / "freeze_simulator.png"
    assert png.read_bytes().startswith(PNG_MAGIC), "regenerate: python -m tlhelpers.simulator snapshot"
    cells = json.loads((ROOT / "notebooks" / "simulator.ipynb").read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells]
    assert any("figures/freeze_simulator.png" in s for s in sources)
    assert any("FreezeView" in s for s in sources if s)
