"""A run step by step: each step's input and answer, its tool calls with arguments and results,
usage and timing, with secrets redacted."""

from __future__ import annotations

import json
import uuid

import pytest

from agentfleet.client import NotFound
from agentfleet.tasks.redaction import MASK, Redactor
from agentfleet.tasks.settings import DEFAULT_REDACT_FIELDS, DEFAULT_REDACT_PATTERNS
from tests.conftest import Fleet


def test_a_two_step_run_with_parallel_tool_calls_step_by_step(fleet: Fleet) -> None:
    prompt = 'call calculator {"expression": "1+1"} call calculator {"expression": "2+2"}'
    run = fleet.client.run(prompt, tools=["calculator"], timeout=60)
    view = fleet.client.run_steps(run.id)
    assert view.run_id == run.id
    assert view.status == "succeeded"
    first, second = view.steps
    assert [m["role"] for m in first.input] == ["user"]
    assert first.output is not None
    assert len(first.output["tool_calls"]) == 2
    assert [(c.name, c.status, c.ok, c.output) for c in first.tool_calls] == [
        ("calculator", "succeeded", True, 2.0),
        ("calculator", "succeeded", True, 4.0),
    ]
    assert first.tool_calls[0].arguments == {"expression": "1+1"}
    assert all(c.latency_ms is not None and c.latency_ms >= 0 for c in first.tool_calls)
    assert [m["role"] for m in second.input] == ["tool", "tool"]
    assert second.output is not None
    assert second.output["content"] == run.result
    assert second.tool_calls == []
    for step in view.steps:
        assert (step.provider, step.model) == ("default", "sim-1")
        assert step.worker
        assert step.latency_ms is not None
        assert step.latency_ms >= 0
        assert step.usage.prompt_tokens > 0
        assert step.deliveries == 1
    assert sum(s.usage.prompt_tokens for s in view.steps) == run.usage.prompt_tokens


def test_a_repaired_answer_keeps_its_rounds_in_its_step(fleet: Fleet) -> None:
    run = fleet.client.run('{"title": "[[invalid:1]] x"}', agent="strict_json", timeout=60)
    (step,) = fleet.client.run_steps(run.id).steps
    assert [m["role"] for m in step.repairs] == ["assistant", "user"]
    assert step.repairs[1]["name"] == "output_repair"
    assert step.output is not None
    assert json.loads(step.output["content"]) == run.result


def test_secrets_in_messages_and_tool_arguments_are_redacted(fleet: Fleet) -> None:
    secret = "Bearer " + uuid.uuid4().hex
    arguments = json.dumps({"text": f"token {secret}"})
    run = fleet.client.run(
        f"key sk-{uuid.uuid4().hex} call text_stats {arguments}", tools=["text_stats"], timeout=60
    )
    shown = fleet.client.run_steps(run.id).model_dump_json()
    assert secret not in shown
    assert "sk-" not in shown
    assert MASK in shown
    assert "call text_stats" in shown  # the rest of the message is there


def test_redaction_covers_keys_patterns_and_tool_call_arguments() -> None:
    redactor = Redactor(DEFAULT_REDACT_FIELDS, DEFAULT_REDACT_PATTERNS)
    assert redactor.value({"API-Key": "x", "nested": [{"password": "y", "n": 1}]}) == {
        "API-Key": MASK,
        "nested": [{"password": MASK, "n": 1}],
    }
    assert redactor.text("id AKIAABCDEFGHIJKLMNOP here") == f"id {MASK} here"
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"token": "t"}'}}],
    }
    shown = redactor.message(message)
    assert json.loads(shown["tool_calls"][0]["function"]["arguments"]) == {"token": MASK}
    assert message["tool_calls"][0]["function"]["arguments"] == '{"token": "t"}'  # a copy


def test_a_cache_hit_shows_in_its_step(fleet: Fleet) -> None:
    prompt = f"cached step {uuid.uuid4().hex}"
    fleet.client.run(prompt, tools=[], cache_ttl=60, timeout=60)
    again = fleet.client.run(prompt, tools=[], cache_ttl=60, timeout=60)
    (step,) = fleet.client.run_steps(again.id).steps
    assert step.usage.cache_hits == 1
    assert step.usage.prompt_tokens == 0


def test_another_tenants_run_has_no_steps(fleet: Fleet) -> None:
    run = fleet.client.run("private", tools=[], timeout=60)
    with fleet.client_of("step-peeker") as other, pytest.raises(NotFound):
        other.run_steps(run.id)
