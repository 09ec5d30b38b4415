"""Agent runs end to end: API -> agents workers -> simulator -> tools workers -> result."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from agentfleet.tasks.llm import resolve_chain
from agentfleet.tasks.metrics import step_fields
from agentfleet.tasks.models import RunRequest
from agentfleet.tasks.states import RunStatus
from agentfleet.tasks.store import RunStore, StepAnswer, ToolClaim
from tests.conftest import Fleet


def test_run_without_tools(fleet: Fleet) -> None:
    accepted = fleet.client.create_run("hello fleet")
    assert accepted.status == "queued"
    run = fleet.client.wait(accepted.id, timeout=30)
    assert run.status == "succeeded"
    assert run.result == "Echo: hello fleet"
    assert run.progress.step == 1
    assert run.usage.llm_calls == 1
    assert run.usage.prompt_tokens > 0
    assert run.usage.completion_tokens > 0
    assert run.usage.total_tokens == run.usage.prompt_tokens + run.usage.completion_tokens
    assert run.started_at
    assert run.finished_at
    assert run.created_at
    # The run ID is the Celery task ID from enqueue to the final result.
    final = fleet.app.AsyncResult(accepted.id).get(timeout=10)
    assert final["status"] == "succeeded"
    assert final["result"] == "Echo: hello fleet"


def test_three_parallel_tool_calls_run_concurrently(fleet: Fleet) -> None:
    prompt = " ".join(f'call record_sleep {{"key": "par-{i}", "seconds": 1.0}}' for i in range(3))
    run = fleet.client.wait(fleet.client.create_run(prompt).id, timeout=60)
    assert run.status == "succeeded", run.error
    assert run.progress.tool_calls_total == 3
    assert run.progress.tool_calls_done == 3
    assert run.usage.llm_calls == 2
    assert run.result is not None
    assert run.result.count("record_sleep=") == 3
    outputs = [json.loads(part.split("=", 1)[1]) for part in run.result[9:].split("; ")]
    # Concurrent: every call started before any call ended, in different processes.
    assert max(o["started"] for o in outputs) < min(o["ended"] for o in outputs)
    assert len({o["pid"] for o in outputs}) == 3
    for i in range(3):
        assert fleet.redis.get(f"test:completed:par-{i}") == "1"


def test_max_steps_exceeded_fails_clearly(fleet: Fleet) -> None:
    prompt = '[[loop]] call text_stats {"text": "again"}'
    run = fleet.client.wait(fleet.client.create_run(prompt, max_steps=3).id, timeout=60)
    assert run.status == "failed"
    assert run.error is not None
    assert run.error.code == "max_steps_exceeded"
    assert "3 steps" in run.error.message
    assert run.usage.llm_calls == 3
    # The last step's tool calls are not dispatched: no step is left to read them.
    assert run.progress.tool_calls_done == 2
    assert run.progress.tool_calls_total == 2
    assert fleet.redis.exists(f"{fleet.settings.redis.key_prefix}:tool:{run.id}-3-0") == 0
    events = [e.type for e in fleet.client.events(run.id)]
    assert events.count("llm_call_started") == 3
    assert events.count("tool_call_started") == 2
    assert events[-2:] == ["step_finished", "failed"]


def test_tool_that_raises_is_shown_to_the_model(fleet: Fleet) -> None:
    run = fleet.client.wait(
        fleet.client.create_run('call explode {"message": "kaboom"}').id, timeout=30
    )
    assert run.status == "succeeded"
    assert run.result is not None
    assert "explode=error (tool_failed)" in run.result
    assert "kaboom" in run.result


def test_invalid_tool_arguments_from_the_model(fleet: Fleet) -> None:
    prompt = '[[badargs]] call calculator {"expression": "1+1"}'
    run = fleet.client.wait(fleet.client.create_run(prompt).id, timeout=30)
    assert run.status == "succeeded"
    assert run.result is not None
    assert "invalid_tool_arguments" in run.result
    assert "not valid JSON" in run.result


def test_unknown_and_disallowed_tools_are_errors_the_model_sees(fleet: Fleet) -> None:
    prompt = 'call no_such_tool {} call calculator {"expression": "2*3"}'
    run = fleet.client.wait(fleet.client.create_run(prompt, tools=["text_stats"]).id, timeout=30)
    assert run.status == "succeeded"
    assert run.result is not None
    assert "no_such_tool=error (unknown_tool)" in run.result
    assert "calculator=error (unknown_tool)" in run.result  # registered, but not allowed


def test_model_answering_garbage_fails_the_run(fleet: Fleet) -> None:
    run = fleet.client.wait(fleet.client.create_run("[[garbage]] hi").id, timeout=30)
    assert run.status == "failed"
    assert run.error is not None
    assert run.error.code == "provider_rejected"
    assert "malformed response" in run.error.message


def test_provider_400_fails_without_retry(fleet: Fleet) -> None:
    before = fleet.sim_stats()["by_tag"].get("e400", 0)
    run = fleet.client.wait(fleet.client.create_run("[[error:400]] [[tag:e400]] x").id, timeout=30)
    assert run.status == "failed"
    assert run.error is not None
    assert run.error.code == "provider_rejected"
    assert "HTTP 400" in run.error.message
    assert fleet.sim_stats()["by_tag"]["e400"] - before == 1


def test_provider_500_is_retried_then_fails_naming_the_cause(fleet: Fleet) -> None:
    before = fleet.sim_stats()["by_tag"].get("e500", 0)
    run = fleet.client.wait(fleet.client.create_run("[[error:500]] [[tag:e500]] x").id, timeout=30)
    assert run.status == "failed"
    assert run.error is not None
    assert run.error.code == "provider_retries_exhausted"
    assert "HTTP 500" in run.error.message
    assert "default" in run.error.message
    # One first attempt plus AGENTFLEET_LLM_MAX_RETRIES=1 retry.
    assert fleet.sim_stats()["by_tag"]["e500"] - before == 2


def test_redelivered_step_changes_nothing(fleet: Fleet, wait: Callable[..., None]) -> None:
    prompt = 'call text_stats {"text": "once"} [[tag:redeliver]]'
    run = fleet.client.wait(fleet.client.create_run(prompt).id, timeout=30)
    assert run.status == "succeeded"
    calls_before = fleet.sim_stats()["by_tag"]["redeliver"]
    record_before = fleet.redis.hgetall(f"af:run:{run.id}")
    # Deliver both steps of the finished run again, as a broker redelivery would.
    fleet.app.send_task("agentfleet.run", kwargs={"request": None}, task_id=run.id)
    tool_result = {"id": f"{run.id}-1-0", "ok": True, "output": {}, "model_call_id": "x"}
    fleet.app.send_task("agentfleet.agent.step", args=([tool_result], run.id, 2), task_id=run.id)
    fleet.app.send_task("agentfleet.agent.step", args=([tool_result], run.id, 1), task_id=run.id)

    # Wait until the agents worker has taken all three messages and holds none of them.
    def settled() -> bool:
        inspect = fleet.app.control.inspect(timeout=1)
        held = [*(inspect.active() or {}).values(), *(inspect.reserved() or {}).values()]
        return fleet.redis.llen("agents") == 0 and not any(
            t["id"] == run.id for tasks in held for t in tasks
        )

    wait(settled, 15, "the redelivered steps to be handled")
    after = fleet.client.get_run(run.id)
    assert fleet.sim_stats()["by_tag"]["redeliver"] == calls_before
    assert after.model_dump() == run.model_dump()
    assert len(fleet.redis.lrange(f"af:run:{run.id}:messages", 0, -1)) == 4
    assert fleet.redis.hget(f"af:run:{run.id}", "llm_calls") == record_before["llm_calls"]


@pytest.mark.parametrize(
    "prompt",
    [
        'call stubborn {"seconds": 60} call text_stats {"text": "ok"}',  # a chord
        'call stubborn {"seconds": 60}',  # one call: a chain (agentfleet.tasks.agent.fan_out)
    ],
    ids=["chord", "chain"],
)
def test_tool_killed_at_its_hard_limit_fails_the_run(fleet: Fleet, prompt: str) -> None:
    # stubborn has timeout=1 (soft) and so a hard limit of 1 + 10 s; it ignores the soft one.
    run = fleet.client.wait(fleet.client.create_run(prompt).id, timeout=60)
    assert run.status == "failed"
    assert run.error is not None
    assert run.error.code == "tool_call_lost"
    assert "TimeLimitExceeded" in run.error.message


def test_one_tool_call_hands_its_result_on_without_a_chord(fleet: Fleet) -> None:
    def chord_keys() -> set[str]:
        return set(fleet.redis.scan_iter("celery-taskset-meta-*"))

    before = chord_keys()
    one = fleet.client.wait(fleet.client.create_run('call text_stats {"text": "a b"}').id, 60)
    assert one.status == "succeeded", one.error
    assert one.result == 'Results: text_stats={"characters": 3, "words": 2, "lines": 1}'
    assert chord_keys() <= before, "a single tool call was joined by a chord"
    calls = 'call text_stats {"text": "a"} call text_stats {"text": "b c"}'
    two = fleet.client.wait(fleet.client.create_run(calls).id, 60)
    assert two.status == "succeeded", two.error
    assert two.progress.tool_calls_done == 2
    assert chord_keys() - before, "two tool calls were not joined by a chord"


def step_one_applied(store: RunStore, run_id: str, text: str) -> str:
    """A run whose step 1 asked for one ``text_stats`` call (ID ``call_1``), applied and marked
    dispatched; the claim token that applied it (its generation)."""
    chain = resolve_chain(store.settings, None)
    request = RunRequest(input=f'call text_stats {{"text": "{text}"}}')
    assert store.create_run(run_id, request, ["text_stats"], chain)
    claim = store.begin_step(run_id, 1)
    arguments = json.dumps({"text": text})
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "text_stats", "arguments": arguments},
    }
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    metrics = step_fields(0.01, chain[0])
    store.apply_step(run_id, 1, claim.token, StepAnswer([message], 10, 5, 1, chain[0], metrics))
    store.finish_step(run_id, 1, claim.token)
    return claim.token


def _step_one_dispatched(store: RunStore, run_id: str, text: str) -> ToolClaim:
    """:func:`step_one_applied`, with that call begun (its claim returned) and no result yet:
    as if its chord were published."""
    step_one_applied(store, run_id, text)
    return store.begin_tool(f"{run_id}-1-0", "text_stats", "{}", run_id, lease_s=5)


def test_applying_a_tool_step_drops_only_its_own_lease(fleet: Fleet) -> None:
    store = RunStore(fleet.redis, fleet.settings)
    run_id = "apply-drops-lease-1"
    chain = resolve_chain(store.settings, None)
    assert store.create_run(run_id, RunRequest(input="hi"), [], chain)
    claim = store.begin_step(run_id, 1)
    message = {"role": "assistant", "content": "hi"}
    metrics = step_fields(0.01, chain[0])
    answer = StepAnswer([message], 10, 5, 0, chain[0], metrics)
    assert store.holds_lease(run_id)
    # Another token's apply stores the answer but leaves the lease to its holder.
    assert store.apply_step(run_id, 1, "not-the-holder", answer) == 1
    assert store.holds_lease(run_id)
    # The holder's (a redelivery: applied before) drops it, and applies nothing twice.
    assert store.apply_step(run_id, 1, claim.token, answer) == 0
    assert not store.holds_lease(run_id)
    assert store.get_run(run_id).usage.prompt_tokens == 10
    # Ended, so tests that wait for the fleet's runs to finish do not wait for this one.
    finished = store.finish_step(run_id, 1, claim.token, status=RunStatus.SUCCEEDED, result="hi")
    assert finished.record.status == RunStatus.SUCCEEDED


def _store_words(store: RunStore, run_id: str, claim: ToolClaim, words: int) -> None:
    output = {
        "id": f"{run_id}-1-0",
        "ok": True,
        "output": {"words": words},
        "model_call_id": "call_1",
    }
    store.complete_tool(f"{run_id}-1-0", claim.token, output, run_id)


def test_a_tool_chord_that_never_fired_is_resumed(fleet: Fleet, wait: Callable[..., None]) -> None:
    # The state a worker leaves when it dies after the last tool finished but before the
    # chord body was published: step 1 applied and dispatched, every tool result stored.
    store = RunStore(fleet.redis, fleet.settings)
    run_id = "lost-chord-1"
    tool_claim = _step_one_dispatched(store, run_id, "two words")
    body = fleet.app.signature("agentfleet.agent.step", args=(run_id, 2), task_id=run_id)

    # A tool still missing: the check leaves the run alone.
    check = fleet.app.send_task("agentfleet.agent.resume", args=(run_id, 1, dict(body)))
    wait(lambda: check.state == "SUCCESS", 15, "the first recovery check")
    assert fleet.client.get_run(run_id).status == "running"

    _store_words(store, run_id, tool_claim, 2)
    fleet.app.send_task("agentfleet.agent.resume", args=(run_id, 1, dict(body)))
    run = fleet.client.wait(run_id, timeout=30)
    assert run.status == "succeeded"
    assert run.result == 'Results: text_stats={"words": 2}'
    assert run.progress.step == 2


def test_a_chord_that_failed_to_join_with_every_result_stored_goes_on(fleet: Fleet) -> None:
    # Celery's chord join is not retried: a Redis outage as the last tool finished makes the
    # chord error although every result is stored. The errback resumes instead of failing.
    store = RunStore(fleet.redis, fleet.settings)
    run_id = "join-failed-1"
    _store_words(store, run_id, _step_one_dispatched(store, run_id, "three little words"), 3)

    fleet.app.send_task("agentfleet.agent.tools_failed", args=(run_id,))
    run = fleet.client.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    assert run.result == 'Results: text_stats={"words": 3}'
