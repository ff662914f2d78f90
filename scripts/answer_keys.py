"""Exercise solutions live apart from the learner's notebooks, and still run where they belong.

A learner's notebook ``notebooks/NN_name.ipynb`` holds each exercise as a question (markdown)
and a scaffold cell tagged ``exercise``; no answer. Its answer key
``notebooks/solutions/NN_name.ipynb`` holds, for each exercise, the question again and the
solution cell (tagged ``solution``, its metadata ``exercise`` naming the scaffold cell's id),
with the output it printed. GitHub, VS Code and Colab show every cell of a notebook, so hiding a
cell inside the learner's notebook hides nothing outside JupyterLab; a second file does.

A solution runs in the state its notebook has built by then, so it is never run on its own:
:func:`merged` puts each solution back right after its exercise, and that merged notebook is
what ``make notebooks`` executes (then :func:`split` writes the two files back, outputs
included), what ``make test`` hands to nbval (``python scripts/answer_keys.py --out DIR`` writes
them), what the series variants run and what ``make book`` renders with the solutions folded.

Usage:
    python scripts/answer_keys.py --out test-artifacts/answer-keys   # every merged notebook, for nbval
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


#: A notebook whose exercises check themselves imports ``from tlhelpers.exercises import nbNN``.
CHECKS = re.compile(r"from tlhelpers\.exercises import (nb\d\d)\b")
#: The tag of the cell :func:`merge` appends to run ``tlhelpers.exercises.verify`` (never in either file).
VERIFY = "verify-exercises"


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def solutions_path(learner: Path) -> Path:
    """Where the answer key of ``learner`` lives (it may not exist: not every notebook has exercises)."""
    return learner.resolve().parent / "solutions" / learner.name


def _title(notebook) -> str:
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return "this notebook"


def _question(notebook, index: int) -> str:
    """The question in the markdown just before the exercise cell at ``index``: from its bold title
    (``**1. ...**``) on, so the '## Exercises' heading and its introduction stay in the notebook."""
    before = notebook.cells[index - 1] if index > 0 else None
    if before is None or before.cell_type != "markdown":
        return ""
    lines = before.source.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("**")), 0)
    return "\n".join(lines[start:]).strip()


def merge(learner, solutions, verify: bool = True):
    """``learner`` with each solution cell of ``solutions`` inserted right after its exercise cell.

    With ``verify`` (what runs: ``make notebooks``, nbval), a last cell per exercise-check module
    asserts that each scaffold said "Not yet" and each solution "Right" (``tlhelpers.exercises.verify``).
    Raises ValueError naming the cell when a solution points at no exercise, or an exercise has no
    solution or several: the two files must be edited together.
    """
    by_exercise: dict[str, object] = {}
    for cell in solutions.cells:
        if "solution" not in tags(cell):
            continue
        target = cell.metadata.get("exercise")
        if not target:
            raise ValueError(f"solution cell {cell.get('id')!r} names no exercise (metadata 'exercise')")
        if target in by_exercise:
            raise ValueError(f"exercise {target!r} has two solutions in the answer key")
        by_exercise[target] = cell
    notebook = copy.deepcopy(learner)
    cells = []
    for cell in notebook.cells:
        cells.append(cell)
        if "exercise" in tags(cell):
            solution = by_exercise.pop(cell.get("id"), None)
            if solution is None:
                raise ValueError(f"exercise cell {cell.get('id')!r} has no solution in the answer key")
            cells.append(copy.deepcopy(solution))
    if by_exercise:
        raise ValueError(f"solutions name exercises the notebook does not have: {sorted(by_exercise)}")
    checks = sorted(set(CHECKS.findall("\n".join(cell.source for cell in cells if cell.cell_type == "code"))))
    for module in checks if verify else []:       # CI: every scaffold said "Not yet", every solution "Right" (tlhelpers.exercises)
        cells.append(nbformat.v4.new_code_cell(f"from tlhelpers import exercises\nprint(exercises.verify({module!r}))",
                                               metadata={"tags": [VERIFY]}))
    notebook.cells = cells
    return notebook


def merged(learner: Path, verify: bool = True):
    """The notebook at ``learner`` with its solutions in place (as is when it has no answer key)."""
    notebook = nbformat.read(learner, as_version=4)
    key = solutions_path(learner)
    return merge(notebook, nbformat.read(key, as_version=4), verify) if key.exists() else notebook


def split(notebook, learner_name: str):
    """A merged ``notebook`` -> (the learner's notebook, its answer key or None when it has no exercise)."""
    learner = copy.deepcopy(notebook)
    learner.cells = [cell for cell in notebook.cells if not {"solution", VERIFY} & set(tags(cell))]
    pairs = []
    for index, cell in enumerate(notebook.cells):
        if "solution" in tags(cell):
            exercise = notebook.cells[index - 1]
            if "exercise" not in tags(exercise):
                raise ValueError(f"solution cell {cell.get('id')!r} does not follow an exercise cell")
            solution = copy.deepcopy(cell)
            solution.metadata["exercise"] = exercise.get("id")
            solution.metadata.pop("jupyter", None)
            pairs.append((_question(notebook, index - 1), exercise.get("id"), solution))
    if not pairs:
        return learner, None
    key = nbformat.v4.new_notebook(metadata={k: copy.deepcopy(v) for k, v in notebook.metadata.items()
                                             if k in ("kernelspec", "language_info")})
    intro = (f"# Solutions: {_title(notebook)}\n\n"
             f"Try each exercise in [the notebook](../{learner_name}) first. A solution runs in the state "
             "that notebook has built by its exercise, so it does not run on its own here: paste it into "
             "the notebook below the exercise's cell. `make notebooks` runs every solution in that place "
             "and stores what it printed below it here; CI checks them the same way.")
    key.cells.append(nbformat.v4.new_markdown_cell(intro, id=f"{learner_name[:2]}-solutions"))
    for number, (question, exercise_id, solution) in enumerate(pairs, 1):
        key.cells.append(nbformat.v4.new_markdown_cell(f"## Exercise {number}\n\n{question}".strip(),
                                                       id=f"{exercise_id}-question",
                                                       metadata={"tags": ["question"]}))
        key.cells.append(solution)
    return learner, key


def write_split(notebook, learner: Path) -> None:
    """Write a merged, executed ``notebook`` back as the learner's notebook and its answer key."""
    plain, key = split(notebook, learner.name)
    nbformat.write(plain, learner)
    if key is not None:
        solutions_path(learner).parent.mkdir(exist_ok=True)
        nbformat.write(key, solutions_path(learner))


def write_merged(out: Path, learners: list[Path] | None = None) -> list[Path]:
    """Write every numbered notebook with its solutions in place into ``out`` (for nbval); return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for learner in learners or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        target = out / learner.name
        nbformat.write(merged(learner), target)
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged notebooks")
    args = parser.parse_args(argv)
    for path in write_merged(args.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
