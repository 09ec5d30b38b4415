"""A run's hash is parsed once, by RunRecord.parse, into the types its callers use."""

from __future__ import annotations

import pytest

from agentfleet.tasks.llm import Target
from agentfleet.tasks.records import RunRecord, Usage
from agentfleet.tasks.states import RunStatus

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
