"""A tenant whose transcripts must not outlive their runs in Redis
(``AGENTFLEET_TENANT_NO_TRANSCRIPT``): its runs still go step by step, and when one ends its
messages, and what its tool calls were given and gave, are gone; its result stays."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from agentfleet.client import Client, InvalidRequest
from agentfleet.tasks import keys
from tests.conftest import Fleet

#: The tenant the shared fleet keeps no transcripts for (tests/conftest.py FLEET_ENV).
TENANT = "untranscribed"
NOT_KEPT = {"ok": True, "transcript": "not_kept"}


@pytest.fixture
def client(fleet: Fleet) -> Iterator[Client]:
    with fleet.client_of(TENANT) as made:
        yield made


def _call(fleet: Fleet, call_id: str) -> dict[str, str]:
    return dict(fleet.redis.hgetall(keys.tool(fleet.settings.redis.key_prefix, call_id)))


def _messages(fleet: Fleet, run_id: str) -> int:
    return int(fleet.redis.exists(keys.run_messages(fleet.settings.redis.key_prefix, run_id)))


def test_a_run_finishes_and_its_transcript_leaves_redis(fleet: Fleet, client: Client) -> None:
    prompt = f'{uuid.uuid4().hex} call calculator {{"expression": "1+1"}} ' + (
        'call calculator {"expression": "2+2"}'
    )
    run = client.run(prompt, tools=["calculator"], cache_ttl=60, timeout=60)
    assert run.status == "succeeded"
    assert run.result == "Results: calculator=2.0; calculator=4.0"  # step 2 read the results
    assert client.get_run(run.id).result == run.result  # the result is kept
    p = fleet.settings.redis.key_prefix
    assert _messages(fleet, run.id) == 0
    record = fleet.redis.hgetall(keys.run(p, run.id))
    assert record[keys.NO_TRANSCRIPT_FIELD] == "1"
    for index in range(2):
        call = _call(fleet, f"{run.id}-1-{index}")
        assert "arguments" not in call
        assert json.loads(call["result"]) == NOT_KEPT
    # No LLM answer was kept in the cache: the same run again calls the provider.
    again = client.run(prompt, tools=["calculator"], cache_ttl=60, timeout=60)
    assert again.usage.cache_hits == 0
    assert not list(fleet.redis.scan_iter(match=f"{p}:cache:*:{TENANT}:*", count=1000))

    view = client.run_steps(run.id)
    assert view.transcript == "not_kept"
    first, second = view.steps
    assert (first.input, first.repairs, first.output) == ([], [], None)
    assert [(c.name, c.status, c.ok, c.arguments, c.output) for c in first.tool_calls] == [
        ("calculator", "succeeded", True, None, None)
    ] * 2
    assert first.usage.prompt_tokens > 0
    assert first.latency_ms is not None
    assert second.output is None
    assert second.usage.completion_tokens > 0

    # The explorer says so.
    url = fleet.stack.api_url
    with httpx.Client(base_url=url, headers={"Origin": url}) as browser:
        key = fleet.stack.make_api_key(TENANT)
        assert browser.post("/ui/login", data={"api_key": key}).is_redirect
        assert 'id="transcript-not-kept"' in browser.get(f"/ui/runs/{run.id}").text

    # Another tenant's runs keep theirs.
    kept = fleet.client.run(prompt, tools=["calculator"], timeout=60)
    assert _messages(fleet, kept.id) == 1
    assert fleet.client.run_steps(kept.id).transcript == "kept"
    assert json.loads(_call(fleet, f"{kept.id}-1-0")["arguments"]) == {"expression": "1+1"}


def test_a_tool_call_that_ends_after_its_run_leaves_nothing_either(
    fleet: Fleet, client: Client, wait: Callable[..., None]
) -> None:
    key = uuid.uuid4().hex
    run = client.create_run(f'call record_sleep {{"key": "{key}", "seconds": 2}}')
    call_id = f"{run.id}-1-0"
    wait(lambda: _call(fleet, call_id).get("status") == "running", 30, "the tool call")
    # While the run runs, its transcript is in Redis: the next step needs it.
    assert _messages(fleet, run.id) == 1
    assert client.run_steps(run.id).steps[0].tool_calls[0].arguments is None
    assert client.cancel(run.id).status == "cancelled"
    assert _messages(fleet, run.id) == 0
    wait(lambda: "result" in _call(fleet, call_id), 30, "the tool call's end")
    call = _call(fleet, call_id)
    assert "arguments" not in call
    assert json.loads(call["result"]) == NOT_KEPT
    assert fleet.counts("completed", [key]) == [1]


def test_a_thread_or_a_stream_is_refused(client: Client) -> None:
    for options, field in (({"thread_id": "t-1"}, "thread_id"), ({"stream": True}, "stream")):
        with pytest.raises(InvalidRequest) as caught:
            client.create_run("x", tools=[], **options)  # type: ignore[arg-type]
        assert field in str(caught.value)
        assert "keeps no transcripts" in str(caught.value)
    items = [{"input": "fine", "tools": []}, {"input": "x", "tools": [], "stream": True}]
    with pytest.raises(InvalidRequest, match=r"items\.1\.stream"):
        client.create_batch(items)


def test_a_context_summary_goes_with_the_transcript(fleet: Fleet, client: Client) -> None:
    text = "lorem ipsum " * 80
    prompt = f'[[rounds:3]] call text_stats {{"text": "{text}"}}'
    sent = client.create_run(
        prompt, tools=["text_stats"], context_budget=700, context_summary=True, max_steps=4
    )
    # The model, shown less than all its rounds, asks again until the steps run out: the run
    # fails, and is final all the same.
    run = client.wait(sent.id, timeout=60)
    assert run.status in ("succeeded", "failed")
    trimmed = [e.data for e in client.events(run.id) if e.type == "context_trimmed"]
    assert trimmed
    assert trimmed[-1]["summarized_messages"] > 0
    record = fleet.redis.hgetall(keys.run(fleet.settings.redis.key_prefix, run.id))
    assert "summary_of" in record  # a summary was made
    assert "summary" not in record


def test_what_a_person_was_asked_and_answered_goes_too(fleet: Fleet, client: Client) -> None:
    question = f"Which size, {uuid.uuid4().hex[:6]}?"
    run_id = client.create_run(
        f'call ask_human {{"question": "{question}"}}', tools=["ask_human"]
    ).id
    waiting = client.wait(run_id, until_waiting=True, timeout=60).waiting
    assert waiting is not None
    assert waiting.pending[0].question == question
    client.answer(run_id, "large")
    done = client.wait(run_id, timeout=60)
    assert done.result == 'Results: ask_human="large"'
    record = fleet.redis.hgetall(keys.run(fleet.settings.redis.key_prefix, run_id))
    assert "decisions" not in record
    assert "waiting" not in record
    kinds = [e.type for e in client.events(run_id)]
    assert "input_received" in kinds  # the events that carry nothing asked or told stay
    assert "input_requested" not in kinds
    stored = fleet.redis.xrange(keys.run_events(fleet.settings.redis.key_prefix, run_id))
    assert question not in json.dumps(stored)
    assert "large" not in json.dumps([f for _, f in stored if f["type"] != "succeeded"])
    call = _call(fleet, f"{run_id}-1-0")
    assert "arguments" not in call
    assert json.loads(call["result"]) == NOT_KEPT
