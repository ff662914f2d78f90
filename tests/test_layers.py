"""tlhelpers imports flow one way: each module imports only modules of lower layers.

The layers, bottom to top, are declared in tlhelpers/__init__.py's docstring map and here. A
module that is not placed in a layer fails this test until someone decides where it belongs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tlhelpers

PACKAGE = Path(tlhelpers.__file__).parent

#: Bottom to top. A module may import modules of strictly lower layers only, so two modules of
#: one layer never import each other. Subpackages count as one module.
LAYERS: list[set[str]] = [
    {"checks", "serving"},
    {"files", "runtime", "compare", "figure_text"},
    {"data"},
    {"assets"},
    {"models"},
    {"freezing"},
    {"evaluation"},
    {"checkpoints", "robust"},
    {"training"},
    {"plots", "corruptions", "lora", "similarity", "protocol", "bundle"},
    {"simulator", "finetune", "predict"},
    {"exercises"},
]


def _layer_of() -> dict[str, int]:
    return {name: index for index, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.name == "__init__.py" and len(relative.parts) == 1:
            continue
        found.setdefault(relative.parts[0].removesuffix(".py"), []).append(path)
    return found


def _imported_package_modules(path: Path) -> set[str]:
    """tlhelpers modules imported anywhere in ``path`` (top level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "tlhelpers":
                if len(parts) > 1:
                    names.add(parts[1])
                else:
                    names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "tlhelpers" and len(parts) > 1:
                    names.add(parts[1])
    return names


def test_every_module_has_a_layer():
    unplaced = sorted(set(_modules()) - set(_layer_of()))
    assert not unplaced, f"place {unplaced} in LAYERS here and in tlhelpers/__init__.py's map"


def test_imports_only_go_down():
    layer = _layer_of()
    wrong = []
    for module, paths in _modules().items():
        for path in paths:
            for imported in _imported_package_modules(path) - {module}:
                if imported not in layer or layer[imported] >= layer.get(module, -1):
                    wrong.append(f"{path.relative_to(PACKAGE)} imports {imported} "
                                 f"(layer {layer.get(imported)} >= its own {layer.get(module)})")
    assert not wrong, "imports must go down the layers:\n" + "\n".join(wrong)


def test_the_package_docstring_lists_the_same_layers():
    doc = tlhelpers.__doc__
    for names in LAYERS:
        for name in names:
            assert f"``{name}``" in doc, f"tlhelpers/__init__.py's map does not mention {name}"
