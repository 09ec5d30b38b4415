"""Imports only go down: ops -> producer -> workers -> tasks (the core).

Every import counts, also one inside a function or under ``TYPE_CHECKING``: a layer that
reaches up, even lazily, is a cycle waiting for its first caller.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Each package's layer: a module may import its own layer and the layers below it.
LAYERS = {"tasks": 0, "workers": 1, "producer": 2, "ops": 3}


def _imported_packages(path: Path) -> set[str]:
    """The top-level names of our packages that ``path`` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & LAYERS.keys()
    return found


def _modules() -> list[Path]:
    return sorted(p for package in LAYERS for p in (REPO / package).rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_only_go_down(path: Path) -> None:
    layer = LAYERS[path.relative_to(REPO).parts[0]]
    upward = {name for name in _imported_packages(path) if LAYERS[name] > layer}
    assert not upward, f"{path.relative_to(REPO)} imports a layer above its own: {upward}"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "upward.py"
    module.write_text("def f():\n    from producer.api import app\n    import workers.conf\n")
    assert _imported_packages(module) == {"producer", "workers"}
