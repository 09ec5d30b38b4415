"""Imports only go down: ops -> producer -> workers -> tasks (the core) -> client.

The client (``agentfleet.client``, its own distribution) is the lowest layer and stands
alone: it imports nothing but the standard library, httpx and pydantic, so installing it
never needs the fleet.

Every import counts, also one inside a function or under ``TYPE_CHECKING``: a layer that
reaches up, even lazily, is a cycle waiting for its first caller. Our code is imported by
its installed name (``agentfleet.tasks``, ...), never by the repository's folder name: a
module loaded under both would be two modules with two copies of its state.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Each package's layer, by the name it is imported as: a module may import its own layer and
#: the layers below it.
LAYERS = {
    "agentfleet.client": -1,
    "agentfleet.tasks": 0,
    "agentfleet.workers": 1,
    "agentfleet.producer": 2,
    "agentfleet.simulator": 3,
    "ops": 3,
}
#: Each repository folder's layer.
FOLDERS = {"client": -1, "tasks": 0, "workers": 1, "producer": 2, "ops": 3}
#: All the client may import besides the standard library and itself.
CLIENT_DEPENDENCIES = {"httpx", "pydantic"}
#: Folder names that are not import names: the installed name is the only one.
WRONG_NAMES = {"client", "tasks", "workers", "producer", "ops.simulator", "agentfleet.ops"}


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module name that ``path`` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _imported_packages(path: Path) -> set[str]:
    """Our packages (keys of ``LAYERS``) that ``path`` imports."""
    return {p for name in _imported_modules(path) for p in LAYERS if _under(name, p)}


def _modules() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (REPO / folder).rglob("*.py"))


def _layer_of(path: Path) -> int:
    relative = path.relative_to(REPO).parts
    return FOLDERS[relative[0]]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_only_go_down(path: Path) -> None:
    layer = _layer_of(path)
    upward = {name for name in _imported_packages(path) if LAYERS[name] > layer}
    assert not upward, f"{path.relative_to(REPO)} imports a layer above its own: {upward}"


def _foreign(path: Path) -> set[str]:
    """What ``path`` imports that is neither the standard library, the client's
    dependencies, nor the client itself."""
    allowed = set(sys.stdlib_module_names) | CLIENT_DEPENDENCIES
    return {
        name
        for name in _imported_modules(path)
        if name.split(".")[0] not in allowed and not _under(name, "agentfleet.client")
    }


@pytest.mark.parametrize(
    "path", sorted((REPO / "client").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO))
)
def test_the_client_imports_only_the_stdlib_httpx_and_pydantic(path: Path) -> None:
    assert not _foreign(path), f"{path.relative_to(REPO)} imports {sorted(_foreign(path))}"


def test_the_check_sees_a_client_import_of_the_fleet_or_another_library(tmp_path: Path) -> None:
    module = tmp_path / "client.py"
    module.write_text(
        "from __future__ import annotations\n"
        "import json, httpx\n"
        "from pydantic import BaseModel\n"
        "from agentfleet.client._models import Run\n"
        "def f():\n"
        "    from agentfleet.tasks.settings import Settings\n"
        "    import redis\n"
    )
    assert _foreign(module) == {"agentfleet.tasks.settings", "redis"}


@pytest.mark.parametrize(
    "path",
    _modules() + sorted((REPO / "tests").rglob("*.py")),
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_our_code_is_imported_by_its_installed_name(path: Path) -> None:
    wrong = {n for n in _imported_modules(path) for w in WRONG_NAMES if _under(n, w)}
    assert not wrong, f"{path.relative_to(REPO)} imports by a folder name: {sorted(wrong)}"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "upward.py"
    module.write_text(
        "def f():\n"
        "    from agentfleet.producer.api import app\n"
        "    import agentfleet.workers.conf\n"
    )
    assert _imported_packages(module) == {"agentfleet.producer", "agentfleet.workers"}


def test_the_check_sees_an_import_by_folder_name(tmp_path: Path) -> None:
    module = tmp_path / "folder.py"
    module.write_text("from tasks.settings import Settings\nimport ops.simulator\n")
    assert _imported_modules(module) == {"tasks.settings", "ops.simulator"}
    assert {n for n in _imported_modules(module) for w in WRONG_NAMES if _under(n, w)} == {
        "tasks.settings",
        "ops.simulator",
    }
