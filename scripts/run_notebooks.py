"""Execute notebooks with nbclient: in place (``make notebooks``) or as a check with other parameters.

Usage:
    python scripts/run_notebooks.py [NOTEBOOK ...]                  # re-execute, store outputs
    python scripts/run_notebooks.py --check --set SEED=7 [NOTEBOOK ...]   # run with SEED = 7, write nothing
    python scripts/run_notebooks.py --check --set DATASET='"digits"' 05_fine_tuning.ipynb
    python scripts/run_notebooks.py --slowest 8 07_when_the_data_is_different.ipynb  # where the time goes

Default notebooks: every notebooks/NN_*.ipynb, then notebooks/simulator.ipynb. Each runs top
to bottom in a fresh kernel with its working directory set to notebooks/, exactly as JupyterLab
and nbval run it, with its exercise solutions (notebooks/solutions/) in place after their
exercises (scripts/answer_keys.py); a write stores the outputs back into both files and the
run time into the notebook's metadata (each figure's output gets alternative text, see
``ALT_TEXT``): ``course.run_seconds`` for the whole notebook (read by
make book) and ``course.main_story_seconds`` for the cells a learner runs before the first
"## Going further: ...", "## Appendix" or "## Sources" heading, solutions excluded. ``--set
NAME=VALUE`` (VALUE is a Python literal) adds a cell right after the tagged ``parameters`` cell
that assigns it, as papermill does; such a run is only a check and never writes the notebook.
The wall time of each notebook is printed; a failing cell stops that notebook, leaves the file
untouched and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import answer_keys  # noqa: E402  scripts/ is on sys.path: this script's own folder (or pytest's pythonpath)
import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from nbclient.exceptions import CellExecutionError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
#: Run in each kernel before the first cell: every figure the notebook displays carries a
#: description in words as its ``alt`` metadata (tlhelpers.figure_text), which make book writes
#: into the page's <img alt>. Binds no name in the notebook.
ALT_TEXT = "--IPKernelApp.exec_lines=__import__('tlhelpers.figure_text', fromlist=['install']).install()"


def default_notebooks() -> list[Path]:
    """Every numbered notebook, then the simulator's page (its stored widget state is what make book shows)."""
    simulator = NOTEBOOKS / "simulator.ipynb"
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) + ([simulator] if simulator.exists() else [])


def parse_assignment(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` with a Python literal VALUE -> (NAME, value); ValueError otherwise."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise ValueError(f"--set needs NAME=VALUE, got {text!r}")
    try:
        return name.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        raise ValueError(f"--set {name.strip()}: {value!r} is not a Python literal "
                         "(quote strings: DATASET='\"digits\"')") from None


def inject_parameters(notebook, overrides: dict[str, object]) -> None:
    """Insert a cell assigning ``overrides`` right after the cell tagged ``parameters``."""
    if not overrides:
        return
    index = next((i for i, cell in enumerate(notebook.cells)
                  if "parameters" in cell.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise ValueError("the notebook has no cell tagged 'parameters' to override")
    source = "# Parameters injected by scripts/run_notebooks.py --set\n" + "\n".join(
        f"{name} = {value!r}" for name, value in overrides.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, cell)


def execute(path: Path, overrides: dict[str, object] | None = None, write: bool = True,
            timeout: int = 900) -> float:
    """Run ``path`` (with ``overrides`` injected); store outputs when ``write``; return seconds."""
    return run(path, overrides, write, timeout)[1]


def printed(notebook) -> str:
    """Everything the executed ``notebook``'s code cells printed (streams and plain-text results)."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            elif "data" in output:
                parts.append(output["data"].get("text/plain", ""))
    return "\n".join(parts)


def is_optional(cell) -> bool:
    """A "## Going further: ...", "## Appendix" or "## Sources" heading: the main story ends before it."""
    first = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
    return cell.cell_type == "markdown" and bool(re.match(r"##\s+(Going further:|Appendix\b|Sources\b)", first))


def cell_seconds(cell) -> float | None:
    """Seconds one executed code cell took, from nbclient's timings (None when it has none)."""
    timing = cell.get("metadata", {}).get("execution", {})
    if cell.cell_type != "code" or "iopub.execute_input" not in timing:
        return None
    began = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
    ended = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    return (ended - began).total_seconds()


def main_story_seconds(notebook) -> float:
    """Seconds the main story's code cells took (solutions excluded), from nbclient's cell timings."""
    total = 0.0
    for cell in notebook.cells:
        if is_optional(cell):
            break
        seconds = cell_seconds(cell)
        if seconds is not None and "solution" not in cell.metadata.get("tags", []):
            total += seconds
    return total


def slowest_cells(notebook, count: int) -> list[str]:
    """The ``count`` slowest code cells as "  12.3 s  cell 17  first line" (where to look when a budget is over)."""
    timed = [(seconds, index, cell.source.strip().splitlines()[0][:70] if cell.source.strip() else "")
             for index, cell in enumerate(notebook.cells) if (seconds := cell_seconds(cell)) is not None]
    return [f"{seconds:7.1f} s  cell {index:2d}  {line}" for seconds, index, line in sorted(timed, reverse=True)[:count]]


def run(path: Path, overrides: dict[str, object] | None = None, write: bool = True,
        timeout: int = 900, slowest: int = 0) -> tuple[nbformat.NotebookNode, float]:
    """:func:`execute` that also returns the executed notebook (its outputs), for checks; prints
    the ``slowest`` slowest cells."""
    notebook = answer_keys.merged(path)
    inject_parameters(notebook, overrides or {})
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            store_widget_state=True, record_timing=True, extra_arguments=[ALT_TEXT])
    began = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - began
    story = main_story_seconds(notebook)
    notebook.metadata["course_run"] = {"main_story_seconds": round(story, 1)}
    for line in slowest_cells(notebook, slowest):
        print(line, flush=True)
    for cell in notebook.cells:              # per-cell timestamps would change every stored file on every run
        cell.get("metadata", {}).pop("execution", None)
    if write and not overrides:
        # the run time a reader is told (make book's course map): this machine, top to bottom
        notebook.metadata.pop("course_run")
        notebook.metadata["course"] = {"run_seconds": round(elapsed, 1), "main_story_seconds": round(story, 1),
                                       "cpu_cores": os.cpu_count()}
        answer_keys.write_split(notebook, path)
    return notebook, elapsed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="override a parameter (a Python literal); implies --check")
    parser.add_argument("--check", action="store_true", help="execute only; do not write the notebooks")
    parser.add_argument("--slowest", type=int, default=0, metavar="N",
                        help="print each notebook's N slowest cells (where to look when a time limit is over)")
    args = parser.parse_args(argv)
    try:
        overrides = dict(parse_assignment(text) for text in args.overrides)
    except ValueError as error:
        parser.error(str(error))
    paths = [p.resolve() if p.exists() else (NOTEBOOKS / p).resolve() for p in args.notebooks] \
        or default_notebooks()
    failed, total = [], 0.0
    for path in paths:
        try:
            notebook, seconds = run(path, overrides, write=not (args.check or overrides),
                                    slowest=args.slowest)
            total += seconds
            story = (notebook.metadata.get("course_run") or notebook.metadata["course"])["main_story_seconds"]
            print(f"{seconds:7.1f} s  {path.relative_to(ROOT)} (main story {story:.1f} s)", flush=True)
        except CellExecutionError as error:
            failed.append(path)
            print(f"FAILED     {path.relative_to(ROOT)}\n{str(error)[-3000:]}", flush=True)
    settings = f" with {', '.join(f'{k}={v!r}' for k, v in overrides.items())}" if overrides else ""
    print(f"{total:7.1f} s  total ({len(paths) - len(failed)} of {len(paths)} notebooks{settings})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
