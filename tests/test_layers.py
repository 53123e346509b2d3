"""The layers: rose <- bus <- sinks <- cli. Imports only point down that line.

Read from the source (every import statement, also those inside functions), so
a lazy import of a higher layer cannot hide in a function body, and no module
of ours is loaded from a string.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("rose", "bus", "sinks", "cli")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", LAYERS)
def test_no_module_imports_a_higher_layer(package):
    higher = LAYERS[LAYERS.index(package) + 1 :]
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _modules(package)
        for line, name in _imported(ast.parse(path.read_text()))
        if name.split(".")[0] in higher
    ]
    assert wrong == []


@pytest.mark.parametrize("package", LAYERS)
def test_no_module_of_ours_is_loaded_from_a_string(package):
    """importlib is for third-party code only (user trackers, sink-kind plug-ins, extras)."""
    wrong = []
    for path in _modules(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).split(".")[0] in LAYERS
            ):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert wrong == []


def test_the_layers_are_the_packages_we_ship():
    """A new top-level package must take its place in LAYERS (and in this test)."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    assert {p.rstrip("*") for p in include} == set(LAYERS)
