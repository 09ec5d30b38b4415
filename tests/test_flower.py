"""Flower, started by ``python -m ops.flower``, watching the real fleet of the test session."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.stack import Stack
from tests.conftest import Fleet

AUTH = ("ops", "correct-horse-battery")
#: Every control endpoint of Flower, with what a Flower that is not read-only answers to the
#: same call (the targets do not exist); read-only must answer 403 to each before looking at
#: anything. None: not sent to the writable Flower (it would publish a task by that name).
NOWHERE = "nobody@nowhere"
NIL = "00000000-0000-0000-0000-000000000000"
CONTROL_ENDPOINTS: dict[str, int | None] = {
    f"/api/worker/shutdown/{NOWHERE}": 404,
    f"/api/worker/pool/restart/{NOWHERE}": 404,
    f"/api/worker/pool/grow/{NOWHERE}": 404,
    f"/api/worker/pool/shrink/{NOWHERE}": 404,
    f"/api/worker/pool/autoscale/{NOWHERE}": 404,
    f"/api/worker/queue/add-consumer/{NOWHERE}": 404,
    f"/api/worker/queue/cancel-consumer/{NOWHERE}": 404,
    f"/api/task/revoke/{NIL}": 200,
    f"/api/task/abort/{NIL}": 503,  # AbortableTask only; ours are not
    "/api/task/timeout/agentfleet.no-such-task": 400,  # no workername
    "/api/task/rate-limit/agentfleet.no-such-task": 400,
    "/api/task/apply/agentfleet.no-such-task": 404,
    "/api/task/async-apply/agentfleet.no-such-task": 404,
    "/api/task/send-task/agentfleet.no-such-task": None,
}


@dataclass
class Flowers:
    writable: httpx.Client
    read_only: httpx.Client
    url: str


@pytest.fixture(scope="module")
def flowers(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flowers]:
    # Its own Stack on the session fleet's Redis, so only the Flowers stop with it.
    stack = Stack(Path(tmp_path_factory.mktemp("flower")), redis_url=fleet.stack.redis_url)
    with stack:
        auth = ":".join(AUTH)
        url = stack.start_flower(basic_auth=auth)
        read_only_url = stack.start_flower(basic_auth=auth, read_only=True)
        with (
            httpx.Client(base_url=url, auth=AUTH, timeout=10) as writable,
            httpx.Client(base_url=read_only_url, auth=AUTH, timeout=10) as read_only,
        ):
            yield Flowers(writable, read_only, url)


def _workers(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/api/workers", params={"refresh": "true"})
    response.raise_for_status()
    return dict(response.json())


def test_flower_lists_our_workers_and_redacted_tasks(
    fleet: Fleet, flowers: Flowers, wait: Callable[..., None]
) -> None:
    nodes = set(fleet.stack.wait_workers(fleet.app, 3))
    wait(lambda: nodes <= set(_workers(flowers.writable)), 30, "Flower to list our workers")
    workers = _workers(flowers.writable)
    assert {q["name"] for n in nodes for q in workers[n]["active_queues"]} == {
        "agents",
        "tools",
        "batch",
    }

    secret = f"canary-{uuid.uuid4().hex}"
    key = f"sk-{uuid.uuid4().hex}"
    run = fleet.client.create_run(f'call text_stats {{"text": "{key}"}} {secret}')
    assert fleet.client.wait(run.id, timeout=60).status == "succeeded"
    call_id = f"{run.id}-1-0"

    def seen() -> bool:
        tasks = flowers.writable.get("/api/tasks").json()
        return tasks.get(run.id, {}).get("state") == "SUCCESS" and call_id in tasks

    wait(seen, 30, "Flower to see the run's tasks")
    response = flowers.writable.get("/api/tasks")
    assert secret not in response.text
    assert key not in response.text
    tasks = response.json()
    # The run entry task replaced itself with a chord whose body (step 2) keeps the run ID.
    step, call = tasks[run.id], tasks[call_id]
    assert step["name"] == "agentfleet.agent.step"
    assert step["args"] == f"{{tool_results=<1 results>, run_id={run.id}, step=2}}"
    assert step["result"].startswith("<result ")
    assert call["name"] == "agentfleet.tool.call"
    assert f"run_id={run.id}" in call["args"]
    assert "name=text_stats" in call["args"]
    assert call["worker"] in nodes
    # Producers send task-sent events too (the worker that dispatched the tool chord here).
    assert call["sent"] is not None

    info = flowers.writable.get(f"/api/task/info/{call_id}")
    assert info.status_code == 200
    assert key not in info.text

    metrics = flowers.writable.get("/metrics").text
    assert 'task="agentfleet.tool.call",type="task-succeeded"' in metrics
    for node in nodes:
        assert f'flower_worker_online{{worker="{node}"}} 1.0' in metrics


#: Another service starts a run with plain Celery: its message carries Celery's own reprs.
FOREIGN = textwrap.dedent(
    """
    import sys
    from celery import Celery

    app = Celery("other-service", broker=sys.argv[1], backend=sys.argv[1])
    app.conf.update(task_serializer="json", accept_content=["json"])
    request = {"input": sys.argv[2], "max_steps": 2}
    result = app.send_task("agentfleet.run", kwargs={"request": request}, queue="agents")
    print(result.get(timeout=60)["id"])
    """
)


def test_runs_from_other_publishers_are_redacted_too(
    fleet: Fleet, flowers: Flowers, wait: Callable[..., None]
) -> None:
    secret = f"canary-{uuid.uuid4().hex}"
    out = subprocess.run(
        [sys.executable, "-I", "-c", FOREIGN, fleet.stack.redis_url or "", secret],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    run_id = out.stdout.strip().splitlines()[-1]
    wait(
        lambda: flowers.writable.get("/api/tasks").json().get(run_id, {}).get("state") == "SUCCESS",
        30,
        "Flower to see the foreign run",
    )
    response = flowers.writable.get("/api/tasks")
    assert secret not in response.text
    shown = response.json()[run_id]
    assert shown["name"] == "agentfleet.run"
    assert shown["kwargs"].startswith("{request=<RunRequest ")


def _failed_counts(flowers: Flowers) -> dict[str, int]:
    """Flower's count of ``task-failed`` events per worker (its workers page)."""
    data = flowers.writable.get("/workers", params={"json": "1"}).json()["data"]
    return {w["hostname"]: int(w.get("task-failed", 0)) for w in data}


def test_flower_tells_how_each_run_ended(
    fleet: Fleet, flowers: Flowers, wait: Callable[..., None]
) -> None:
    before = _failed_counts(flowers)
    ended = {
        fleet.client.create_run("flower: succeeds").id: "SUCCESS",
        fleet.client.create_run("[[error:400]] flower: refused").id: "FAILURE",
        fleet.client.create_run('[[loop]] call text_stats {"text": "x"}', max_steps=2).id: (
            "FAILURE"
        ),
    }
    cancelled = fleet.client.create_run("[[latency:2]] flower: cancelled").id
    key = f"{fleet.settings.redis.key_prefix}:run:{cancelled}"
    wait(lambda: fleet.redis.hget(key, "status") == "running", 30, "the run to start")
    fleet.client.cancel(cancelled)
    ended[cancelled] = "FAILURE"
    for run_id in ended:
        fleet.client.wait(run_id, timeout=60)

    def states() -> dict[str, str | None]:
        tasks = flowers.writable.get("/api/tasks").json()
        return {run_id: tasks.get(run_id, {}).get("state") for run_id in ended}

    wait(lambda: states() == ended, 30, f"Flower to see how the runs ended: {states()}")
    # Each failed or cancelled run counts once as a failure of the worker that ended it.
    after = _failed_counts(flowers)
    assert sum(after.values()) - sum(before.values()) == 3
    assert all(after[node] >= before.get(node, 0) for node in after)
    assert (
        sum(n for node, n in after.items() if node.startswith("agents"))
        - sum(n for node, n in before.items() if node.startswith("agents"))
        == 3
    )


def test_basic_auth_is_enforced(flowers: Flowers) -> None:
    for path in ("/api/workers", "/api/tasks", "/"):
        assert httpx.get(f"{flowers.url}{path}").status_code == 401, path
        wrong = httpx.get(f"{flowers.url}{path}", auth=(AUTH[0], "wrong"))
        assert wrong.status_code == 401, path
    assert flowers.writable.get("/").status_code == 200
    # Prometheus scrapes /metrics without credentials (Flower exempts it and /healthcheck).
    assert httpx.get(f"{flowers.url}/metrics").status_code == 200


@pytest.mark.parametrize(("path", "writable_status"), CONTROL_ENDPOINTS.items())
def test_read_only_refuses_every_control_endpoint(
    flowers: Flowers, path: str, writable_status: int | None
) -> None:
    refused = flowers.read_only.post(path)
    assert refused.status_code == 403
    assert "Read only" in refused.text
    if writable_status is not None:
        assert flowers.writable.post(path).status_code == writable_status


def test_read_only_revoke_is_refused_and_nothing_is_revoked(fleet: Fleet, flowers: Flowers) -> None:
    def revoked() -> set[str]:
        replies = fleet.app.control.inspect(timeout=2).revoked() or {}
        return {task for ids in replies.values() for task in ids}

    run = fleet.client.create_run("[[latency:1.5]] slow answer")
    refused = flowers.read_only.post(f"/api/task/revoke/{run.id}", params={"terminate": "true"})
    assert refused.status_code == 403
    assert fleet.client.wait(run.id, timeout=60).status == "succeeded"
    assert run.id not in revoked()

    # The same request to the writable Flower does revoke (an ID no task uses).
    unused = str(uuid.uuid4())
    assert flowers.writable.post(f"/api/task/revoke/{unused}").status_code == 200
    assert unused in revoked()


def test_flower_ui_page_lists_workers(fleet: Fleet, flowers: Flowers) -> None:
    page = flowers.writable.get("/workers")
    assert page.status_code == 200
    for node in fleet.stack.wait_workers(fleet.app, 3):
        assert node in page.text or json.dumps(node) in page.text
