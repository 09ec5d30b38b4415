"""A run step by step: each step's input and answer, its tool calls with arguments and results,
usage and timing, with secrets redacted."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime

import httpx
import pytest

from agentfleet.client import NotFound
from agentfleet.simulator.faults import clear_faults, set_faults
from agentfleet.tasks.redaction import MASK, Redactor
from agentfleet.tasks.setting_groups import DEFAULT_REDACT_FIELDS, DEFAULT_REDACT_PATTERNS
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


def _ms(iso: str | None) -> float:
    assert iso is not None
    return datetime.fromisoformat(iso).timestamp() * 1000


def test_a_run_with_a_retry_a_cache_hit_and_parallel_tool_calls_step_by_step(
    fleet: Fleet,
) -> None:
    tag = uuid.uuid4().hex[:8]
    calls = " ".join(f'call record_sleep {{"key": "{tag}-{i}", "seconds": 0}}' for i in range(2))
    # Every conversation of this prompt is answered 503 once, then answered.
    prompt = f"[[flaky:1]] [[tag:{tag}]] {calls}"
    # A first run puts its first answer in the cache. Its second step fails once more: one
    # retry more than the fleet allows a run (AGENTFLEET_LLM_MAX_RETRIES=1).
    first = fleet.client.wait(
        fleet.client.create_run(prompt, tools=["record_sleep"], cache_ttl=60).id, timeout=60
    )
    assert first.error is not None
    assert first.error.code == "provider_retries_exhausted"
    run = fleet.client.run(prompt, tools=["record_sleep"], cache_ttl=60, timeout=60)
    assert run.status == "succeeded"
    one, two = fleet.client.run_steps(run.id).steps

    # Step 1: the cache's answer, two tool calls in parallel, with arguments and results.
    assert one.usage.cache_hits == 1
    assert (one.attempts, one.retries, one.waits) == (1, [], [])
    assert one.output is not None
    assert len(one.output["tool_calls"]) == 2
    assert [(c.name, c.arguments, c.status, c.ok) for c in one.tool_calls] == [
        ("record_sleep", {"key": f"{tag}-{i}", "seconds": 0}, "succeeded", True) for i in range(2)
    ]
    assert [c.output["key"] for c in one.tool_calls] == [f"{tag}-0", f"{tag}-1"]
    assert all(c.latency_ms is not None for c in one.tool_calls)
    assert [m["role"] for m in two.input] == ["tool", "tool"]

    # Step 2: a new conversation, so a provider call: its first attempt failed and was retried.
    (retry,) = two.retries
    assert retry.attempt == 1
    assert "503" in retry.error
    assert retry.countdown_s is not None
    assert retry.countdown_s > 0
    assert two.attempts == 2
    assert _ms(two.started_at) == _ms(retry.started_at) <= _ms(retry.failed_at)
    assert two.latency_ms is not None
    # The latency is the answered call's: from the retry's start, not the step's.
    assert two.latency_ms <= _ms(two.finished_at) - _ms(retry.failed_at)
    assert two.usage.cache_hits == 0
    assert two.usage.prompt_tokens > 0
    assert two.output is not None
    assert two.output["content"] == run.result
    # The first run made three calls (one answered from step 1's retry); this one two.
    assert fleet.tagged(tag) == 5

    # The explorer draws the failed attempt on the step's timeline row and names its error.
    url = fleet.stack.api_url
    with httpx.Client(base_url=url, headers={"Origin": url}) as browser:
        assert browser.post("/ui/login", data={"api_key": fleet.stack.api_key}).is_redirect
        page = browser.get(f"/ui/runs/{run.id}").text
    row = page[page.index('data-step="2" data-kind="llm"') :]
    row = row[: row.index("</tr>")]
    assert 'data-kind="error"' in row
    assert "1 retry" in row
    assert "Attempt 1 failed" in page


def test_a_wait_for_a_provider_shows_in_its_step(fleet: Fleet, wait: Callable[..., None]) -> None:
    sim = fleet.stack.simulator_url.removesuffix("/v1")
    tag = uuid.uuid4().hex[:8]
    # Answered 429 with Retry-After: 2 s, the fleet holds every call to the provider meanwhile.
    set_faults(sim, "default", status=429, retry_after=2)
    try:
        limited = fleet.client.create_run(f"[[tag:{tag}]] limited", tools=[])
        wait(lambda: fleet.tagged(tag) > 0, 20, "the rate-limited call")
    finally:
        clear_faults(sim, "default")
    held = fleet.client.create_run(f"held {uuid.uuid4().hex}", tools=[])
    for run in (limited, held):
        assert fleet.client.wait(run.id, timeout=30).status == "succeeded"
    (step,) = fleet.client.run_steps(limited.id).steps
    assert [r.attempt for r in step.retries] == [1]
    assert "429" in step.retries[0].error
    (step,) = fleet.client.run_steps(held.id).steps
    assert step.waits
    assert step.waits[0].reason == "providers_unavailable"
    assert step.waits[0].retry_at
    assert step.attempts == len(step.waits) + 1
