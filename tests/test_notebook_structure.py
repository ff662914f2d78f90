"""Every numbered notebook follows the conventions in CONTRIBUTING.md.

Checked per notebook (``notebooks/NN_*.ipynb``): the title cell and its objectives, the
tagged parameters cell, self-check asserts, seeding, exercises with collapsed solutions, the
closing summary, stored outputs from a clean execution, and no ``pretrained=True`` outside the
deprecation demo in notebook 01. A separate test lists which of the planned notebooks 01-07
are missing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PLANNED = [f"{n:02d}" for n in range(1, 8)]
REQUIRED_PARAMETERS = ("BACKBONE", "DATASET", "PER_CLASS", "EPOCHS", "SEED")
DEFAULTS = {"BACKBONE": "mobilenet_v2", "DATASET": "fashion-mnist"}


def numbered_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def heading(cell) -> str:
    """The first non-empty line of a cell's source."""
    return next((line.strip() for line in cell.source.splitlines() if line.strip()), "")


@pytest.fixture(params=numbered_notebooks(), ids=lambda path: path.name)
def notebook(request):
    path = request.param
    return path, nbformat.read(path, as_version=4)


def test_planned_notebooks_exist():
    """01..07 are written by several people; this lists the ones that have not landed yet."""
    present = {path.name[:2] for path in numbered_notebooks()}
    missing = [number for number in PLANNED if number not in present]
    assert not missing, f"missing notebooks: {', '.join(f'{n}_*.ipynb' for n in missing)}"


def test_title_and_objectives(notebook):
    path, nb = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown", f"{path.name}: the first cell must be markdown"
    number = path.name[:2]
    assert re.match(rf"#\s+{number}\b", first.source.lstrip()), \
        f"{path.name}: the first cell must start with '# {number} · Title'"
    assert "What you will be able to do" in first.source, \
        f"{path.name}: the first cell needs a '## What you will be able to do' list"


def test_parameters_cell(notebook):
    path, nb = notebook
    cells = code_cells(nb)
    assert cells, f"{path.name} has no code cells"
    first = cells[0]
    assert "parameters" in first.metadata.get("tags", []), \
        f"{path.name}: the first code cell must be tagged 'parameters'"
    assigned = {}
    for node in ast.parse(first.source).body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else []
        for target in targets:
            if isinstance(target, ast.Name):
                assigned[target.id] = node.value
    missing = [name for name in REQUIRED_PARAMETERS if name not in assigned]
    assert not missing, f"{path.name}: the parameters cell does not assign {', '.join(missing)}"
    for name, default in DEFAULTS.items():
        value = ast.literal_eval(assigned[name])
        assert value == default, f"{path.name}: {name} must default to {default!r} (got {value!r})"


def test_has_self_checks(notebook):
    path, nb = notebook
    has_assert = any(isinstance(node, ast.Assert)
                     for cell in code_cells(nb) for node in ast.walk(_parse(cell.source, path)))
    assert has_assert, f"{path.name}: add at least one self-check `assert` cell"


def test_is_seeded(notebook):
    path, nb = notebook
    source = "\n".join(cell.source for cell in code_cells(nb))
    assert re.search(r"seed_everything\(\s*SEED\s*\)|torch\.manual_seed\(\s*SEED\s*\)", source), \
        f"{path.name}: call training.seed_everything(SEED) (or torch.manual_seed(SEED))"


def test_exercises_with_collapsed_solutions(notebook):
    path, nb = notebook
    start = next((i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
                  and re.search(r"^##\s+Exercises\b", cell.source, re.MULTILINE)), None)
    assert start is not None, f"{path.name}: needs a '## Exercises' heading"
    solutions = [cell for cell in nb.cells[start + 1:] if cell.cell_type == "code"
                 and cell.metadata.get("jupyter", {}).get("source_hidden") is True]
    assert solutions, (f"{path.name}: each exercise needs a solution code cell with "
                       "metadata jupyter.source_hidden = true after '## Exercises'")


def test_ends_with_summary(notebook):
    path, nb = notebook
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and re.match(r"##\s+Summary\b", heading(last)), \
        f"{path.name}: the last cell must be markdown starting with '## Summary'"


def test_executed_cleanly(notebook):
    path, nb = notebook
    for index, cell in enumerate(code_cells(nb)):
        first_line = heading(cell)[:60]
        assert cell.execution_count is not None, \
            f"{path.name}: code cell {index} ({first_line!r}) was not executed; run `make notebooks`"
        errors = [out for out in cell.get("outputs", []) if out.get("output_type") == "error"]
        assert not errors, (f"{path.name}: code cell {index} ({first_line!r}) stored an error: "
                            f"{errors[0].get('ename')}: {errors[0].get('evalue')}")


def test_no_pretrained_true(notebook):
    """`pretrained=True` is deprecated; only notebook 01 calls it, in a cell that catches its warning.

    Calls are found with ``ast`` (a keyword argument ``pretrained=True``), so prose in strings
    and comments that merely names the old API is fine.
    """
    path, nb = notebook
    for index, cell in enumerate(code_cells(nb)):
        calls_it = any(isinstance(node, ast.keyword) and node.arg == "pretrained"
                       and isinstance(node.value, ast.Constant) and node.value.value is True
                       for node in ast.walk(_parse(cell.source, path)))
        if not calls_it:
            continue
        allowed = path.name.startswith("01_") and "catch_warnings" in cell.source
        assert allowed, (f"{path.name}: code cell {index} calls a model with pretrained=True; use "
                         "weights=<Model>_Weights.<MEMBER> (only notebook 01's deprecation demo may show it)")


def _parse(source: str, path: Path) -> ast.AST:
    """Parse a cell, ignoring IPython magics and shell escapes (lines starting with % or !)."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError as error:
        pytest.fail(f"{path.name}: a code cell does not parse as Python: {error}")
