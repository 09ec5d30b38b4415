"""What reaches the provider, read from the simulator's recorded request bodies: model
settings, the typed-result repair round, a thread's history, a trimmed context, and the raw
request path sending exactly what the openai SDK's ``chat.completions.create`` sends."""

from __future__ import annotations

import json
import uuid
from typing import Any

import openai
import pytest

from agentfleet.simulator.control import recorded_requests
from agentfleet.tasks.llm import CallOptions, complete, request_body
from agentfleet.tasks.models import ModelSettings
from agentfleet.tasks.output import OutputSpec
from agentfleet.tasks.setting_groups import LlmTransport
from tests.agents import Verdict
from tests.conftest import Fleet


def _tag() -> str:
    return f"w{uuid.uuid4().hex[:10]}"


def _bodies(fleet: Fleet, tag: str) -> list[dict[str, Any]]:
    base = fleet.stack.simulator_url.removesuffix("/v1")
    return [r["body"] for r in recorded_requests(base, tag=tag)]


def test_model_settings_reach_the_provider_and_a_forced_tool_choice_lets_go(
    fleet: Fleet,
) -> None:
    tag = _tag()
    settings = {
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 200,
        "seed": 9,
        "stop": ["zzz"],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "reasoning_effort": "low",
    }
    run = fleet.client.run(
        f'call calculator {{"expression": "2+2"}} [[tag:{tag}]]',
        tools=["calculator"],
        model_settings=settings,
        timeout=60,
    )
    assert run.status == "succeeded"
    first, second = _bodies(fleet, tag)
    assert {k: first[k] for k in settings} == settings
    # After the model called a tool, a forced choice would make it call one forever.
    assert "tool_choice" not in second
    assert second["temperature"] == 0.3


def test_a_typed_run_is_repaired_once_and_the_repair_is_sent_named(fleet: Fleet) -> None:
    tag = _tag()
    run = fleet.client.run(f"triage this [[invalid:1]] [[tag:{tag}]]", output_type=Verdict)
    assert run == Verdict(label="bug", confidence=0.0)
    first, second = _bodies(fleet, tag)
    assert first["response_format"]["json_schema"]["strict"] is True
    assert first["response_format"]["json_schema"]["schema"]["additionalProperties"] is False
    repair = second["messages"][-1]
    assert repair["name"] == "output_repair"
    assert "not JSON" in repair["content"]
    assert second["messages"][-2] == {
        "role": "assistant",
        "content": "Sorry, this answer is not JSON.",
    }


def test_a_thread_run_sends_the_turns_before_it(fleet: Fleet) -> None:
    thread, tag = f"wire-{uuid.uuid4().hex[:8]}", _tag()
    fleet.client.run("I am Ada.", thread_id=thread, timeout=60)
    fleet.client.run("I like tea.", thread_id=thread, timeout=60)
    fleet.client.run(f"Who am I? [[tag:{tag}]]", thread_id=thread, timeout=60)
    (body,) = _bodies(fleet, tag)
    users = [m["content"] for m in body["messages"] if m["role"] == "user"]
    assert users == ["I am Ada.", "I like tea.", f"Who am I? [[tag:{tag}]]"]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 2 + ["user"]


def test_a_small_context_budget_trims_a_long_thread_keeping_calls_with_results(
    fleet: Fleet,
) -> None:
    thread, tag = f"trim-{uuid.uuid4().hex[:8]}", _tag()
    long_text = "abc " * 300
    for _ in range(4):
        arguments = json.dumps({"text": long_text, "operation": "upper"})
        fleet.client.run(
            f"call transform_text {arguments}",
            thread_id=thread,
            thread_history="full",
            tools=["transform_text"],
            timeout=60,
        )
    run = fleet.client.run(
        f"and now? [[tag:{tag}]]",
        system="Be brief.",
        thread_id=thread,
        tools=[],
        context_budget=1200,
        timeout=60,
    )
    (body,) = _bodies(fleet, tag)
    sent = body["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[-1]["content"] == f"and now? [[tag:{tag}]]"
    assert len(sent) < 2 + 4 * 4  # some of the 4 four-message turns are gone
    assert len(json.dumps(sent)) // 4 < 1200
    asked = [c["id"] for m in sent for c in m.get("tool_calls") or []]
    answered = [m["tool_call_id"] for m in sent if m["role"] == "tool"]
    assert asked == answered  # whole turns: no call without its result, or the reverse
    events = [e for e in fleet.client.events(run.id) if e.type == "context_trimmed"]
    assert events
    assert events[0].data["dropped_messages"] > 0


def test_what_the_budget_leaves_out_can_be_replaced_by_a_summary(fleet: Fleet) -> None:
    thread, old, tag = f"sum-{uuid.uuid4().hex[:8]}", _tag(), _tag()
    for index in range(4):
        filler = f"turn {index} " + "lorem ipsum " * 60
        fleet.client.run(f"[[tag:{old}]] {filler}", thread_id=thread, tools=[], timeout=60)
    run = fleet.client.run(
        f"and now? [[tag:{tag}]]",
        system="Be brief.",
        thread_id=thread,
        tools=[],
        context_budget=800,
        context_summary=True,
        timeout=60,
    )
    (body,) = _bodies(fleet, tag)
    sent = body["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[1]["role"] == "system"
    assert sent[1]["content"].startswith("Summary of the earlier conversation (")
    assert sent[-1]["content"] == f"and now? [[tag:{tag}]]"
    # The summary was asked of the model, with what was left out, within its reserve.
    asks = [b for b in _bodies(fleet, old) if "Summarize" in b["messages"][0]["content"]]
    assert len(asks) == 1
    assert asks[0]["max_tokens"] == 800 // 8
    assert "turn 0" in asks[0]["messages"][1]["content"]
    (event,) = [e.data for e in fleet.client.events(run.id) if e.type == "context_trimmed"]
    assert event["summarized_messages"] == event["dropped_messages"] > 0
    assert run.usage.llm_calls == 2  # the summary, then the answer
    # The summary text is what the model answered to the request for it.
    answer = fleet.redis.hget(f"{fleet.settings.redis.key_prefix}:run:{run.id}", "summary")
    assert answer
    assert answer in sent[1]["content"]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_the_raw_request_is_the_one_the_sdk_sends(fleet: Fleet, transport: LlmTransport) -> None:
    """The fleet posts chat completions without ``create()``'s walk of its parameters
    (docs/performance.md), on either transport; this is the check that it posts the same body."""
    provider = fleet.settings.llm.provider_list[0]
    tag = _tag()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"hello [[tag:{tag}]]"},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    settings = ModelSettings(
        temperature=0.5, max_tokens=30, seed=1, stop="zzz", tool_choice="auto", top_p=0.5
    )
    options = CallOptions(settings.body(), OutputSpec.of("verdict", Verdict))
    complete(provider, messages, tools, "sim-1", options=options, transport=transport)
    sdk = openai.OpenAI(base_url=provider.base_url, api_key="x", max_retries=0)
    sdk.chat.completions.create(**request_body(provider, "sim-1", messages, tools, options))
    complete(
        provider,
        messages,
        tools,
        "sim-1",
        on_delta=lambda _: None,
        options=options,
        transport=transport,
    )
    stream = sdk.chat.completions.create(
        **request_body(provider, "sim-1", messages, tools, options),
        stream=True,
        stream_options={"include_usage": True},
    )
    for _ in stream:
        pass
    ours, theirs, ours_streamed, theirs_streamed = _bodies(fleet, tag)
    assert ours == theirs
    assert ours_streamed == theirs_streamed
    assert ours["response_format"]["type"] == "json_schema"
