"""Cancelling runs and batches: the LLM calls stop, the status is cancelled."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from agentfleet.client import ApiError
from agentfleet.tasks.errors import RunFailed
from tests.conftest import Fleet


def _looping(tag: str) -> str:
    # The model keeps calling the tool until max_steps: a long run to cancel mid-way.
    call = f'call record_sleep {{"key": "{tag}", "seconds": 0.2}}'
    return f"[[loop]] [[latency:0.2]] [[tag:{tag}]] {call}"


def test_cancel_a_run_mid_way(fleet: Fleet, wait: Callable[..., None]) -> None:
    run_id = fleet.client.create_run(_looping("cancel-run"), max_steps=40).id
    wait(lambda: fleet.tagged("cancel-run") >= 3, 30, "a few LLM calls")
    cancelled = fleet.client.cancel(run_id)
    assert cancelled.status == "cancelled"
    calls_at_cancel = fleet.tagged("cancel-run")

    time.sleep(2.0)  # long enough for several more steps had it gone on
    assert fleet.tagged("cancel-run") <= calls_at_cancel + 1  # at most the one in flight
    run = fleet.client.get_run(run_id)
    assert run.status == "cancelled"
    assert run.usage.llm_calls < 40
    events = [e.type for e in fleet.client.events(run_id)]
    assert events[-1] == "cancelled"
    # The run's Celery result is its end: FAILURE, with its final record.
    with pytest.raises(RunFailed) as ended:
        fleet.app.AsyncResult(run_id).get(timeout=20)
    assert ended.value.record["status"] == "cancelled"

    with pytest.raises(ApiError) as again:
        fleet.client.cancel(run_id)
    assert again.value.status == 409


def test_cancel_a_batch_stops_its_work(fleet: Fleet, wait: Callable[..., None]) -> None:
    items: list[dict[str, object]] = [
        {"input": f"[[latency:0.3]] [[tag:cancel-batch]] item {i}"} for i in range(300)
    ]
    # Eight 3 s tool calls on 4 tools slots: at least four are still queued at the cancel.
    waits = [{"type": "tool_call", "name": "wait", "arguments": {"seconds": 3}}] * 8
    batch_id = fleet.client.create_batch(items + waits).id
    wait(lambda: fleet.client.get_batch(batch_id, limit=0).completed >= 5, 60, "some items")
    fleet.client.cancel_batch(batch_id)
    calls_at_cancel = fleet.tagged("cancel-batch")

    batch = fleet.client.wait_batch(batch_id, timeout=60)
    assert batch.status == "cancelled"
    assert batch.completed == batch.total == 308
    assert batch.counts.cancelled > 0
    assert batch.counts.succeeded + batch.counts.cancelled == 308
    tools = fleet.client.get_batch(batch_id, offset=300, limit=8).items
    assert [t.kind for t in tools] == ["tool_call"] * 8
    assert sum(t.status == "cancelled" for t in tools) >= 4
    assert all(
        t.error == {"code": "cancelled", "message": "batch cancelled"}
        for t in tools
        if t.status == "cancelled"
    )
    time.sleep(1.5)
    # Only calls already in flight at the cancel could still arrive.
    assert fleet.tagged("cancel-batch") <= calls_at_cancel + 100
    assert fleet.tagged("cancel-batch") < 300
    assert batch.result is not None
    assert batch.result["counts"]["cancelled"] == batch.counts.cancelled
