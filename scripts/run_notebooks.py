"""Re-execute notebooks in place with nbclient so stored outputs and widget state match the code.

Usage: python scripts/run_notebooks.py [NOTEBOOK ...]   (default: every notebooks/NN_*.ipynb)

Each notebook runs top to bottom in a fresh kernel with its working directory set to
notebooks/, exactly as JupyterLab and nbval run it. The wall time of each is printed; a
failing cell stops that notebook, leaves the file untouched and makes the exit status 1.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from nbclient.exceptions import CellExecutionError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def default_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) + sorted((NOTEBOOKS / "solutions").glob("*.ipynb"))


def execute(path: Path, timeout: int = 900) -> float:
    """Run ``path`` in place; return its wall time in seconds."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            store_widget_state=True, record_timing=False)
    began = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - began
    nbformat.write(notebook, path)
    return elapsed


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or default_notebooks()
    failed, total = [], 0.0
    for path in paths:
        try:
            seconds = execute(path)
            total += seconds
            print(f"{seconds:7.1f} s  {path.relative_to(ROOT)}", flush=True)
        except CellExecutionError as error:
            failed.append(path)
            print(f"FAILED     {path.relative_to(ROOT)}\n{str(error)[-3000:]}", flush=True)
    print(f"{total:7.1f} s  total ({len(paths) - len(failed)} of {len(paths)} notebooks)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
