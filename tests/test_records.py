"""Run, tool-call and batch hashes are parsed once, by the records' ``parse``, into the types
their callers use; records the previous release wrote parse too."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from agentfleet import client
from agentfleet.tasks.llm import Target
from agentfleet.tasks.records import (
    BatchCounts,
    BatchRecord,
    RunRecord,
    ToolCallRecord,
    Usage,
)
from agentfleet.tasks.states import (
    FINAL,
    TOOL_CALL_FINAL,
    BatchStatus,
    RunStatus,
    ToolCallStatus,
)
from agentfleet.tasks.store import parse_tool_call

SNAPSHOT = Path(__file__).parent / "data" / "previous-release.json"

#: A running run's hash as the scripts leave it after step 2 dispatched two tool calls.
STORED = {
    "id": "r1",
    "tenant": "acme",
    "cap": "2",
    "status": "running",
    "model": "sim-small",
    "chain": '[["sim", "sim-small"], ["backup", "sim-large"]]',
    "max_steps": "8",
    "tools": '["text_stats", "sleep"]',
    "metadata": "{}",
    "stream": "1",
    "created_at": "1700000000.5",
    "started_at": "1700000001.25",
    "updated_at": "1700000003.0",
    "step": "2",
    "applied_step": "2",
    "dispatched_step": "2",
    "tools_total": "3",
    "tools_done": "1",
    "prompt_tokens": "120",
    "completion_tokens": "30",
    "llm_calls": "2",
    "gen:2": "abc",
    "tools:2": "2",
    "deliveries:2": "1",
    "deliveries:3": "0",
}


def test_a_stored_run_parses_into_its_types() -> None:
    run = RunRecord.parse(STORED)
    assert run.status is RunStatus.RUNNING
    assert (run.step, run.applied_step, run.dispatched_step, run.max_steps) == (2, 2, 2, 8)
    assert (run.tools_total, run.tools_done, run.cap) == (3, 1, 2)
    assert run.usage == Usage(120, 30, 2)
    assert run.usage.total_tokens == 150
    assert run.tools == ("text_stats", "sleep")
    assert run.chain == (Target("sim", "sim-small"), Target("backup", "sim-large"))
    assert run.stream is True
    assert (run.created_at, run.started_at, run.finished_at) == (1700000000.5, 1700000001.25, None)
    assert (run.batch_id, run.callback_url) == ("", "")
    assert not run.terminal
    assert run.fields == STORED


def test_per_step_fields() -> None:
    run = RunRecord.parse(STORED)
    assert (run.gen(2), run.gen(1)) == ("abc", "")
    assert (run.tool_calls(2), run.tool_calls(3)) == (2, 0)
    # A step given back (its deliveries count back at 0) was still delivered.
    assert (run.delivered(2), run.delivered(3), run.delivered(4)) == (True, True, False)


def test_a_new_run_has_no_progress() -> None:
    fields = {"id": "r2", "status": "queued", "created_at": "1", "step": "0", "stream": "0"}
    run = RunRecord.parse(fields)
    assert (run.tenant, run.step, run.dispatched_step, run.usage) == ("default", 0, 0, Usage())
    assert (run.tools, run.chain, run.stream) == ((), (), False)


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="paused"):
        RunRecord.parse({**STORED, "status": "paused"})


def _previous_release(prefix: str) -> dict[str, str]:
    """The hash whose key starts with ``prefix`` as the previous release left it in Redis
    (``tests/data/previous-release.json``, see tests/test_previous_release.py)."""
    snapshot = json.loads(SNAPSHOT.read_text())
    for entry in snapshot["keys"]:
        key = base64.b64decode(entry["key"]).decode()
        if key.startswith(prefix) and entry["type"] == "hash":
            return {
                base64.b64decode(k).decode(): base64.b64decode(v).decode()
                for k, v in entry["value"].items()
            }
    raise AssertionError(f"no hash {prefix}* in the snapshot")


#: A standalone tool call as create_tool, begin_tool and complete_tool leave it.
STORED_CALL = {
    "id": "acme.c1",
    "tenant": "acme",
    "name": "calculator",
    "arguments": '{"expression": "6*7"}',
    "status": "succeeded",
    "created_at": "1700000000.5",
    "started_at": "1700000001.25",
    "finished_at": "1700000002",
    "attempts": "1",
    "batch_id": "b1",
    "result": '{"id": "acme.c1", "name": "calculator", "ok": true, "output": 42.0, "gen": ""}',
    "gen": "",
}


def test_a_stored_tool_call_parses_into_its_types() -> None:
    call = ToolCallRecord.parse(STORED_CALL)
    assert call.status is ToolCallStatus.SUCCEEDED
    assert call.terminal
    assert (call.id, call.name, call.tenant, call.batch_id, call.run_id) == (
        "acme.c1",
        "calculator",
        "acme",
        "b1",
        "",
    )
    assert call.arguments == {"expression": "6*7"}
    assert call.result == {
        "id": "acme.c1",
        "name": "calculator",
        "ok": True,
        "output": 42.0,
        "gen": "",
    }
    assert call.attempts == 1
    assert (call.created_at, call.started_at, call.finished_at) == (
        1700000000.5,
        1700000001.25,
        1700000002.0,
    )


def test_a_tool_call_of_the_previous_release_parses_with_defaults() -> None:
    fields = _previous_release("af:tool:")
    # Queued, never begun.
    assert "attempts" not in fields
    assert "result" not in fields
    call = ToolCallRecord.parse(fields)
    assert call.status is ToolCallStatus.QUEUED
    assert not call.terminal
    assert (call.id, call.name, call.tenant) == ("upgrade.upgrade-call", "calculator", "upgrade")
    assert call.arguments == {"expression": "2+3"}
    assert (call.result, call.attempts, call.run_id, call.batch_id) == (None, 0, "", "")
    assert call.created_at == float(fields["created_at"])
    assert (call.started_at, call.finished_at) == (None, None)


def test_a_run_tool_call_begun_but_not_claimed_is_queued() -> None:
    # begin_tool writes the record of a run's call, and counts the delivery, before the
    # status: a delivery over the redelivery limit stops there.
    fields = {"id": "r1-1-0", "name": "sleep", "arguments": "{}", "run_id": "r1", "attempts": "4"}
    call = ToolCallRecord.parse(fields)
    assert (call.status, call.run_id, call.tenant, call.attempts) == (
        ToolCallStatus.QUEUED,
        "r1",
        "",
        4,
    )


def test_a_models_malformed_arguments_stay_text() -> None:
    call = ToolCallRecord.parse({**STORED_CALL, "arguments": "{not json"})
    assert call.arguments == "{not json"


def test_a_tool_call_record_without_its_id_takes_its_keys() -> None:
    # complete_tool.lua stores a result on any key: such a record has no id field.
    fields = {"result": '{"ok": false}', "status": "failed", "finished_at": "5", "gen": ""}
    call = parse_tool_call("r1-2-0", fields)
    assert call is not None
    assert (call.id, call.name, call.status, call.created_at) == (
        "r1-2-0",
        "",
        ToolCallStatus.FAILED,
        None,
    )
    assert parse_tool_call("r1-2-0", {}) is None


def test_an_unknown_tool_call_status_is_refused() -> None:
    with pytest.raises(ValueError, match="paused"):
        ToolCallRecord.parse({**STORED_CALL, "status": "paused"})


#: A batch as the API writes it, after its dispatch, with three items final.
STORED_BATCH = {
    "id": "b1",
    "tenant": "acme",
    "status": "running",
    "total": "5",
    "completed": "3",
    "n_succeeded": "2",
    "n_cancelled": "1",
    "metadata": '{"job": "nightly"}',
    "callback_url": "https://example.com/hooks",
    "created_at": "1700000000.5",
    "dispatched_at": "1700000000.75",
}


def test_a_stored_batch_parses_into_its_types() -> None:
    batch = BatchRecord.parse(STORED_BATCH)
    assert batch.status is BatchStatus.RUNNING
    assert not batch.terminal
    assert (batch.id, batch.tenant, batch.total, batch.completed) == ("b1", "acme", 5, 3)
    assert batch.counts == BatchCounts(succeeded=2, failed=0, cancelled=1)
    assert batch.metadata == {"job": "nightly"}
    assert (batch.result, batch.pending) == (None, False)
    assert batch.callback_url == "https://example.com/hooks"
    assert (batch.created_at, batch.dispatched_at, batch.finished_at) == (
        1700000000.5,
        1700000000.75,
        None,
    )
    summary = {"total": 5, "counts": {"succeeded": 4, "cancelled": 1}, "failed_items": []}
    done = BatchRecord.parse(
        {**STORED_BATCH, "status": "completed", "result": json.dumps(summary), "finished_at": "9"}
    )
    assert (done.status, done.terminal, done.result, done.finished_at) == (
        BatchStatus.COMPLETED,
        True,
        summary,
        9.0,
    )
    assert BatchRecord.parse({**STORED_BATCH, "pending": "token"}).pending
    assert BatchRecord.parse({**STORED_BATCH, "status": "cancelled"}).terminal


def test_a_batch_of_the_previous_release_parses_with_defaults() -> None:
    fields = _previous_release("af:batch:")
    batch = BatchRecord.parse(fields)
    assert batch.status is BatchStatus.QUEUED
    assert (batch.tenant, batch.total, batch.completed) == ("upgrade", 2, 0)
    assert batch.counts == BatchCounts()
    assert (batch.metadata, batch.result, batch.callback_url, batch.pending) == (
        {},
        None,
        "",
        False,
    )
    assert (batch.dispatched_at, batch.finished_at) == (None, None)


def test_the_clients_statuses_are_the_servers() -> None:
    def literal(model: type[BaseModel]) -> set[str]:
        return set(get_args(model.model_fields["status"].annotation))

    assert literal(client.ToolCall) == {s.value for s in ToolCallStatus}
    assert literal(client.Batch) == {s.value for s in BatchStatus}
    assert literal(client.Run) == {s.value for s in RunStatus}
    assert {s.value for s in TOOL_CALL_FINAL} == client.TOOL_CALL_FINAL
    assert {s.value for s in FINAL} == client.RUN_FINAL
