"""Structured logs: a fleet with AGENTFLEET_LOG_FORMAT=json writes one JSON object per line."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentfleet.tasks.settings import Settings
from agentfleet.workers.logs import RECEIPT_LOGGER, quiet_receipts
from ops.stack import PoolSpec, Proc, Stack
from tests.conftest import Fleet, private_fleet

JSON_ENV = {
    "AGENTFLEET_LOG_FORMAT": "json",
    "AGENTFLEET_LOG_LEVEL": "INFO",
    # The tests may run as root, and a root worker warns before logging is set up, in plain
    # text on stderr; nothing else a worker prints before its shutdown notice is unlogged.
    "PYTHONWARNINGS": "ignore:You're running the worker with superuser privileges",
}
FIELDS = {"timestamp", "level", "logger", "message"}


@pytest.fixture(scope="module")
def json_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    def start(stack: Stack) -> None:
        stack.start_redis()
        stack.start_simulator()
        stack.start_worker(PoolSpec("agents", "threads", 10))
        stack.start_worker(PoolSpec("tools", "prefork", 2))
        stack.start_api(log_level="info")  # uvicorn's access lines too

    stack = Stack(Path(tmp_path_factory.mktemp("jsonlogs")), env_overrides=JSON_ENV)
    with private_fleet(stack, start, 2) as fleet:
        yield fleet


def _lines(proc: Proc) -> list[dict[str, Any]]:
    """Every line of a process's log, each parsed as JSON (a line that is not fails)."""
    lines = proc.log.read_text().splitlines()
    assert lines, f"{proc.name} logged nothing"
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{proc.name} line {number} is not JSON: {line!r}")
        assert isinstance(entry, dict)
        assert entry.keys() >= FIELDS, entry
        parsed.append(entry)
    return parsed


def _proc(fleet: Fleet, prefix: str) -> Proc:
    return next(p for p in fleet.stack.procs if p.name.startswith(prefix))


def test_worker_and_api_lines_are_json_with_run_and_task_ids(json_fleet: Fleet) -> None:
    fleet = json_fleet
    secret = f"canary-{uuid.uuid4().hex}"
    run = fleet.client.create_run(f'call text_stats {{"text": "{secret}"}} {secret}')
    final = fleet.client.wait(run.id, timeout=60)
    assert final.status == "succeeded"
    assert fleet.http.get(f"/v1/runs/{run.id}").status_code == 200

    agents = _lines(_proc(fleet, "worker-agents"))
    ours = [e for e in agents if e.get("run_id") == run.id]
    # Step 1 (the run entry task, replaced by its tool chord) and step 2 each log a line.
    assert {e["task"] for e in ours} == {"agentfleet.run", "agentfleet.agent.step"}
    assert all(e["task_id"] == run.id for e in ours)
    # Each task's end is logged at INFO; its receipt only at DEBUG (workers/logs.py).
    assert any(" succeeded in " in e["message"] for e in ours)
    assert not [e for e in agents if e["logger"] == RECEIPT_LOGGER], "receipts logged at INFO"

    tools = _lines(_proc(fleet, "worker-tools"))
    calls = [e for e in tools if e.get("run_id") == run.id]
    assert calls, "no line of the tool call (run in a prefork child) names the run"
    assert {e["task_id"] for e in calls} == {f"{run.id}-1-0"}
    assert any(e["process"] != _proc(fleet, "worker-tools").popen.pid for e in calls)

    api = _lines(_proc(fleet, "api-"))
    enqueued = [e for e in api if e["message"] == f"run {run.id} enqueued"]
    assert [e.get("run_id") for e in enqueued] == [run.id]
    access = [e for e in api if e["logger"] == "uvicorn.access"]
    polls = [e for e in access if f"/v1/runs/{run.id}" in e["message"]]
    assert polls
    assert all(e.get("run_id") == run.id for e in polls)
    other = [e for e in access if "/healthz" in e["message"]]
    assert other
    assert all("run_id" not in e for e in other)

    # Neither the prompt nor the tool's arguments reach any log line.
    for proc in fleet.stack.procs:
        if proc.name.startswith(("worker-", "api-")):
            assert secret not in proc.log.read_text(), proc.name


@pytest.mark.parametrize(
    ("worker_level", "env_level", "receipts"),
    [
        (logging.INFO, None, False),
        (logging.DEBUG, None, True),
        (logging.DEBUG, "INFO", False),  # AGENTFLEET_LOG_LEVEL wins over -l
        (logging.INFO, "DEBUG", True),
    ],
)
def test_task_receipts_are_logged_only_at_debug(
    worker_level: int, env_level: str | None, receipts: bool
) -> None:
    logger, root = logging.getLogger(RECEIPT_LOGGER), logging.getLogger()
    before = logger.level, root.level
    try:
        logger.setLevel(logging.NOTSET)
        settings = Settings() if env_level is None else Settings(log_level=env_level)
        quiet_receipts(worker_level, settings)
        root.setLevel(logging.DEBUG)  # what a DEBUG worker's root logger has
        assert logger.isEnabledFor(logging.INFO) is receipts
    finally:
        logger.setLevel(before[0])
        root.setLevel(before[1])
