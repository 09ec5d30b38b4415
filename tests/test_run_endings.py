"""Every way a run ends is its Celery result: another service with only Celery sees it.

A run that succeeds stores its final record as the run ID's result; one that fails or is
cancelled stores ``FAILURE`` with ``RunFailed(message, record)``, so ``get()`` returns (by
raising) and Flower is told the truth. Each ending is watched from a process that imports
Celery and nothing of ours.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Fleet

WAITER = textwrap.dedent(
    """
    import json, sys
    from celery import Celery

    url, mode, arg = sys.argv[1:4]
    app = Celery("other-service", broker=url, backend=url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    if mode == "send":
        result = app.send_task("agentfleet.run", kwargs={"request": json.loads(arg)},
                               queue="agents")
        print(json.dumps({"id": result.id}), flush=True)
    else:
        result = app.AsyncResult(arg)
    try:
        out = {"returned": result.get(timeout=30)}
    except Exception as exc:
        out = {"raised": type(exc).__name__, "args": list(exc.args)}
    out["state"] = result.state
    OURS = ("agentfleet", "tasks", "workers", "producer", "ops")
    out["leaked"] = sorted(m for m in OURS if m in sys.modules)
    print(json.dumps(out), flush=True)
    """
)


def _start(fleet: Fleet, mode: str, arg: str) -> subprocess.Popen[str]:
    # -I: isolated mode, no PYTHONPATH, and the working directory is not the repository.
    return subprocess.Popen(
        [sys.executable, "-I", "-c", WAITER, fleet.stack.redis_url or "", mode, arg],
        cwd="/",
        stdout=subprocess.PIPE,
        text=True,
    )


def _outcome(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=90)
    reply = dict(json.loads(out.strip().splitlines()[-1]))
    assert reply["leaked"] == []
    return reply


def _send(fleet: Fleet, payload: dict[str, Any]) -> dict[str, Any]:
    return _outcome(_start(fleet, "send", json.dumps(payload)))


def _failure(reply: dict[str, Any], status: str, code: str | None) -> dict[str, Any]:
    """The record a ``FAILURE`` carries, checked against the ending expected."""
    assert reply["state"] == "FAILURE", reply
    assert reply["raised"] == "RunFailed"
    message, record = reply["args"]
    assert record["status"] == status
    if code is not None:
        assert record["error"]["code"] == code
        assert code in message
    return dict(record)


def test_a_succeeded_run_returns_its_record(fleet: Fleet) -> None:
    reply = _send(fleet, {"input": "done at once"})
    assert reply["state"] == "SUCCESS"
    assert reply["returned"]["status"] == "succeeded"
    assert reply["returned"]["result"] == "Echo: done at once"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"input": "[[error:400]] refused"}, "provider_rejected"),
        ({"input": "[[error:500]] down"}, "provider_retries_exhausted"),
        (
            {"input": '[[loop]] call text_stats {"text": "again"}', "max_steps": 2},
            "max_steps_exceeded",
        ),
        ({"input": "", "max_steps": 999}, "invalid_request"),
        ({"input": 'call stubborn {"seconds": 30}'}, "tool_call_lost"),
    ],
    ids=["provider-rejected", "retries-exhausted", "max-steps", "invalid-payload", "tool-lost"],
)
def test_a_failed_run_releases_get_with_its_record(
    fleet: Fleet, payload: dict[str, Any], code: str
) -> None:
    record = _failure(_send(fleet, payload), "failed", code)
    # The same record the API serves.
    assert fleet.http.get(f"/v1/runs/{record['id']}").json()["error"] == record["error"]


def test_a_cancelled_run_releases_get(fleet: Fleet, wait: Callable[..., None]) -> None:
    proc = _start(fleet, "send", json.dumps({"input": "[[latency:2]] slow"}))
    assert proc.stdout is not None
    run_id = json.loads(proc.stdout.readline())["id"]
    wait(
        lambda: (
            fleet.redis.hget(f"{fleet.settings.redis.key_prefix}:run:{run_id}", "status")
            == "running"
        ),
        30,
        "the run to start",
    )
    assert fleet.http.post(f"/v1/runs/{run_id}/cancel").status_code == 200
    _failure(_outcome(proc), "cancelled", None)


def test_a_run_cancelled_while_it_waits_for_a_slot_releases_get(
    fleet: Fleet, wait: Callable[..., None]
) -> None:
    # The session fleet caps tenant "capped" at 3 runs in flight: the fourth waits, with no
    # message in any queue, until a slot is free; cancelling it there must still end it.
    with fleet.client_of("capped") as client:
        holders = [client.create_run("[[latency:3]] holder").id for _ in range(3)]
        tenant = f"{fleet.settings.redis.key_prefix}:tenant:capped"
        wait(lambda: fleet.redis.scard(f"{tenant}:inflight") == 3, 30, "the holders to start")
        waiting = client.create_run("waits its turn").id
        waiting_key = f"{tenant}:waiting"
        wait(lambda: fleet.redis.zscore(waiting_key, waiting) is not None, 30, "it to wait")
        proc = _start(fleet, "wait", waiting)
        client.cancel(waiting)
        started = time.monotonic()
        _failure(_outcome(proc), "cancelled", None)
        # Released by the cancel, not by the holders finishing.
        assert time.monotonic() - started < 2.5
        for run_id in holders:
            assert client.wait(run_id, timeout=30).status == "succeeded"


def test_a_run_over_its_redelivery_limit_releases_get(
    fleet: Fleet, wait: Callable[..., None]
) -> None:
    # Step 2 already delivered max_redeliveries times (each worker lost while running it):
    # its next delivery fails the run.
    key = f"{fleet.settings.redis.key_prefix}:run:"
    run_id = fleet.client.create_run('call record_sleep {"key": "redeliver-cap", "seconds": 2}').id
    wait(lambda: fleet.redis.hget(key + run_id, "dispatched_step") == "1", 30, "the tool step")
    fleet.redis.hset(key + run_id, "deliveries:2", fleet.settings.limits.max_redeliveries)
    record = _failure(_outcome(_start(fleet, "wait", run_id)), "failed", "redelivery_limit")
    assert record["progress"]["step"] == 1
