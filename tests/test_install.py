"""agentfleet installed into a user's project: everything under ``agentfleet.``, nothing else.

A project laid out the usual Celery way has its own ``tasks.py`` and ``workers/``. In a fresh
virtualenv, with agentfleet installed from this repository (as a wheel, and as an editable
install), the project's tool module imports both its own ``tasks`` and agentfleet, a
``celery -A agentfleet.workers`` worker started in the project serves the tool, and a call
sent by name runs it. The wheel holds no benchmarks or development tools; the simulator
ships as a command.

The client is its own distribution (``agentfleet-client``, from ``client/``; on no package
index, so it is installed from its folder beside the fleet): installed alone, it brings
httpx and pydantic and nothing of the fleet, and talks to a running fleet.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from ops.stack import ENV_PREFIX, Stack
from tests.conftest import Fleet

REPO = Path(__file__).resolve().parent.parent
CLIENT = REPO / "client"
#: What the fleet brings and the client must not.
FLEET_ONLY = {"agentfleet", "celery", "kombu", "redis", "fastapi", "uvicorn", "flower"}

USER_TASKS = '''
"""The project's own Celery-style tasks module: agentfleet must not shadow it."""
GREETING = "hello from the project's tasks.py"
'''

USER_TOOLS = '''
"""The project's tools: its own modules and agentfleet, side by side."""
import tasks  # the project's tasks.py
import workers  # the project's workers/ package
from agentfleet.tasks.tools import tool


@tool
def greet(name: str) -> str:
    """Greets someone with the project's greeting."""
    return f"{tasks.GREETING}, {name} ({workers.POOL})"
'''

SEND = """
import json, sys
import tasks
from celery import Celery
from agentfleet.tasks import names

url = sys.argv[1]
app = Celery("project", broker=url, backend=url)
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
call = {"id": "installed-greet", "name": "greet", "arguments": {"name": "Ada"}}
result = app.send_task(names.TOOL_CALL, kwargs={"request": call}, queue="tools")
print(json.dumps({"final": result.get(timeout=60), "tasks": tasks.GREETING}))
"""


def _project(root: Path) -> Path:
    project = root / "project"
    (project / "workers").mkdir(parents=True)
    (project / "tasks.py").write_text(USER_TASKS)
    (project / "workers" / "__init__.py").write_text('POOL = "the project\'s workers"\n')
    (project / "projecttools.py").write_text(USER_TOOLS)
    return project


def _venv(root: Path, *install: str) -> Path:
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *install],
        check=True,
        timeout=600,
        cwd=root,
    )
    return python


def _clean_env() -> dict[str, str]:
    """Nothing of this repository's environment: not its PYTHONPATH, not its settings."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(ENV_PREFIX) and k not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }


def _env(redis_url: str) -> dict[str, str]:
    return _clean_env() | {
        "AGENTFLEET_REDIS_URL": redis_url,
        "AGENTFLEET_TOOL_MODULES": "projecttools",
    }


@pytest.mark.parametrize("mode", ["wheel", "editable"])
def test_a_project_with_its_own_tasks_and_workers_runs_an_agentfleet_tool(
    tmp_path: Path, mode: str
) -> None:
    project = _project(tmp_path)
    # The fleet's dependency on agentfleet-client is met by the client's folder, given alongside.
    sources = [str(CLIENT), str(REPO)]
    python = _venv(
        tmp_path, *([f for s in sources for f in ("-e", s)] if mode == "editable" else sources)
    )
    with Stack(tmp_path / "stack") as stack, (tmp_path / "worker.log").open("wb") as worker_log:
        redis_url = stack.start_redis()
        env = _env(redis_url)
        worker = subprocess.Popen(
            [
                *(str(python), "-m", "celery", "-A", "agentfleet.workers", "worker"),
                *("-Q", "tools", "-P", "prefork", "-c", "1", "-n", "project@%h"),
                *("--without-mingle", "--without-gossip"),
            ],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=worker_log,
            start_new_session=True,
        )
        try:
            sent = subprocess.run(
                [str(python), "-c", SEND, redis_url],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        log = (tmp_path / "worker.log").read_text()
    assert sent.returncode == 0, sent.stderr + log[-3000:]
    reply = json.loads(sent.stdout.strip().splitlines()[-1])
    assert reply["tasks"] == "hello from the project's tasks.py"
    assert reply["final"] == {
        "id": "installed-greet",
        "name": "greet",
        "ok": True,
        "output": "hello from the project's tasks.py, Ada (the project's workers)",
    }


def _wheel(tmp_path: Path, source: Path) -> zipfile.ZipFile:
    """The wheel pip builds of the distribution in ``source`` (its dependencies not built)."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), source],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("*.whl")
    return zipfile.ZipFile(wheel)


def test_the_wheel_holds_the_fleet_and_the_simulator_and_no_development_tools(
    tmp_path: Path,
) -> None:
    with _wheel(tmp_path, REPO) as archive:
        files = archive.namelist()
        (entry_points,) = [f for f in files if f.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    tops = {f.split("/")[0] for f in files if ".dist-info/" not in f}
    assert tops == {"agentfleet"}
    packages = {"/".join(f.split("/")[:2]) for f in files if f.startswith("agentfleet/")}
    assert packages == {
        "agentfleet/tasks",
        "agentfleet/workers",
        "agentfleet/producer",
        "agentfleet/simulator",
    }
    # No agentfleet/__init__.py: the namespace is shared with the client's distribution.
    assert "agentfleet/__init__.py" not in files
    assert "agentfleet/tasks/py.typed" in files
    # The Lua scripts are package data, read when the store and the provider guard load.
    lua = {f"agentfleet/{p.relative_to(REPO).as_posix()}" for p in (REPO / "tasks").rglob("*.lua")}
    assert lua, "no .lua files found in the checkout"
    assert sorted(lua - set(files)) == []
    # So are the run explorer's templates, scripts and styles, read when the API serves /ui.
    ui = {
        f"agentfleet/{p.relative_to(REPO).as_posix()}"
        for folder in ("ui_templates", "ui_static")
        for p in (REPO / "producer" / folder).iterdir()
    }
    assert len(ui) > 5
    assert sorted(ui - set(files)) == []
    assert "agentfleet = agentfleet.producer.cli:main" in scripts
    assert "agentfleet-simulator = agentfleet.simulator.__main__:main" in scripts


def test_every_package_folder_is_in_the_wheel() -> None:
    """A new subpackage must be listed in pyproject.toml, or the wheel silently lacks it."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for name, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *relative)))
    assert found == listed


CLIENT_ONLY = """
import asyncio, importlib.util, json, sys
from agentfleet.client import AsyncClient, Client, NotFound

url, key = sys.argv[1:3]
with Client(url, api_key=key) as client:
    run = client.wait(client.create_run('call calculator {"expression": "6*7"}').id, timeout=60)


async def main():
    async with AsyncClient(url, api_key=key) as client:
        accepted = await client.create_run("hello from the client alone")
        kinds = [event.type async for event in client.events(accepted.id)]
        try:
            await client.get_run("no-such-run")
        except NotFound as exc:
            return kinds, exc.message


kinds, missing = asyncio.run(main())
print(json.dumps({
    "run": [run.status, run.result],
    "kinds": [kinds[0], kinds[-1]],
    "missing": missing,
    "fleet": importlib.util.find_spec("agentfleet.tasks") is not None,
}))
"""


def test_the_client_alone_brings_nothing_of_the_fleet_and_talks_to_it(
    tmp_path: Path, fleet: Fleet
) -> None:
    python = _venv(tmp_path, str(CLIENT))
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"agentfleet-client", "httpx", "pydantic"} <= installed
    assert not FLEET_ONLY & installed
    talked = subprocess.run(
        [str(python), "-c", CLIENT_ONLY, fleet.stack.api_url, fleet.stack.api_key],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert talked.returncode == 0, talked.stderr
    assert json.loads(talked.stdout) == {
        "run": ["succeeded", "Results: calculator=42.0"],
        "kinds": ["queued", "succeeded"],
        "missing": "no run with id 'no-such-run'",
        "fleet": False,
    }


def test_the_client_wheel_holds_the_client_alone(tmp_path: Path) -> None:
    with _wheel(tmp_path, CLIENT) as archive:
        files = {f for f in archive.namelist() if ".dist-info/" not in f}
    assert {"/".join(f.split("/")[:2]) for f in files} == {"agentfleet/client"}
    assert "agentfleet/__init__.py" not in files  # the namespace is shared with the fleet's
    assert "agentfleet/client/py.typed" in files
