"""End-to-end tests of the chat-completions simulator through the real openai SDK."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from agentfleet.simulator.faults import clear_faults, set_faults
from agentfleet.simulator.faults import main as faults_main

from .conftest import running_simulator

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The {name} tool.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    for name in ("lookup", "search", "fetch")
]

PARALLEL_PROMPT = (
    'Do three things: call lookup {"key": "a"} then call search {"q": "x", "filter": {"n": [1, 2]}}'
    " and finally call fetch"
)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """Run ``python -m agentfleet.simulator`` as a subprocess for the whole module."""
    with running_simulator() as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    """A synchronous SDK client pointed at the simulator."""
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="sim", max_retries=0, timeout=10) as sdk:
        yield sdk


def _stats(base_url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{base_url}/_sim/stats").json()
    return result


def _reset(base_url: str) -> None:
    httpx.post(f"{base_url}/_sim/reset").raise_for_status()


def _user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def _assistant_turn(message: Any) -> dict[str, Any]:
    """Turn an SDK assistant message into a request message dict."""
    turn: dict[str, Any] = message.model_dump(exclude_none=True)
    return turn


def test_echo_answer_with_usage(client: openai.OpenAI) -> None:
    prompt = "  hello   world [[tag:echo]]  "
    result = client.chat.completions.create(model="sim-2", messages=_user(prompt))

    choice = result.choices[0]
    assert choice.message.content == "Echo: hello world"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert result.model == "sim-2"
    assert result.object == "chat.completion"
    assert result.id.startswith("chatcmpl-")
    assert len(result.id) == len("chatcmpl-") + 24
    assert result.usage is not None
    assert result.usage.prompt_tokens == len(prompt) // 4 + 1
    assert result.usage.completion_tokens == len("Echo: hello world") // 4 + 1
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_text_parts_content_and_no_tools_means_text(client: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "call lookup {} please"}]},
    ]
    result = client.chat.completions.create(model="sim-1", messages=messages)

    # Without offered tools the call directive is not acted on.
    assert result.choices[0].finish_reason == "stop"
    assert result.choices[0].message.content == "Echo: please"


def test_parallel_tool_calls_are_deterministic(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="sim-1", messages=_user(PARALLEL_PROMPT), tools=TOOLS
    )
    second = client.chat.completions.create(
        model="sim-1", messages=_user(PARALLEL_PROMPT), tools=TOOLS
    )

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert [c.function.name for c in calls] == ["lookup", "search", "fetch"]  # type: ignore[union-attr]
    assert [json.loads(c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        {"key": "a"},
        {"q": "x", "filter": {"n": [1, 2]}},
        {},
    ]
    ids = [c.id for c in calls]
    assert all(i.startswith("call_") and len(i) == 5 + 24 for i in ids)
    assert len(set(ids)) == 3
    assert second.choices[0].message.tool_calls is not None
    assert [c.id for c in second.choices[0].message.tool_calls] == ids
    assert second.id == first.id


def test_tool_results_turn(client: openai.OpenAI) -> None:
    messages = _user(PARALLEL_PROMPT)
    first = client.chat.completions.create(model="sim-1", messages=messages, tools=TOOLS)
    calls = first.choices[0].message.tool_calls
    assert calls is not None

    messages.append(_assistant_turn(first.choices[0].message))
    outputs = ["42", "found it", "page"]
    for call, output in zip(calls, outputs, strict=True):
        messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
    second = client.chat.completions.create(model="sim-1", messages=messages, tools=TOOLS)

    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content == "Results: lookup=42; search=found it; fetch=page"


def _run_turns(client: openai.OpenAI, prompt: str, turns: int) -> list[Any]:
    """Play ``turns`` turns, answering every tool call with "ok"; return the choices."""
    messages = _user(prompt)
    choices: list[Any] = []
    for _ in range(turns):
        result = client.chat.completions.create(model="sim-1", messages=messages, tools=TOOLS)
        choice = result.choices[0]
        choices.append(choice)
        if choice.finish_reason != "tool_calls":
            break
        messages.append(_assistant_turn(choice.message))
        for call in choice.message.tool_calls or []:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "ok"})
    return choices


def test_rounds_directive(client: openai.OpenAI) -> None:
    choices = _run_turns(client, "call lookup {} [[rounds:2]] [[reply:all done]]", 5)

    assert [c.finish_reason for c in choices] == ["tool_calls", "tool_calls", "stop"]
    assert choices[2].message.content == "all done"
    # Each round gets fresh ids because the conversation differs.
    assert choices[0].message.tool_calls[0].id != choices[1].message.tool_calls[0].id


def test_loop_directive_never_answers(client: openai.OpenAI) -> None:
    choices = _run_turns(client, '[[loop]] call search {"q": "again"}', 6)

    assert len(choices) == 6
    assert all(c.finish_reason == "tool_calls" for c in choices)
    assert all(c.message.tool_calls[0].function.name == "search" for c in choices)


def test_badargs_directive(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="sim-1", messages=_user('call lookup {"key": 1} [[badargs]]'), tools=TOOLS
    )
    calls = result.choices[0].message.tool_calls
    assert calls is not None
    arguments = calls[0].function.arguments  # type: ignore[union-attr]
    assert arguments == "{not json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(arguments)


def test_unknown_tool_name_passes_through(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="sim-1", messages=_user('call no_such.tool {"a": 1}'), tools=TOOLS
    )
    calls = result.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.name == "no_such.tool"  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"a": 1}  # type: ignore[union-attr]


def test_error_500(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="sim-1", messages=_user("[[error:500]]"))
    assert caught.value.status_code == 500
    assert caught.value.body == {
        "message": "simulated error 500",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_error_429_has_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="sim-1", messages=_user("[[error:429]]"))
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "1"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "rate_limit_error"


def test_flaky_fails_the_first_requests_of_each_conversation(client: openai.OpenAI) -> None:
    first = _user(f"[[flaky:2]] once {time.time()}")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="sim-1", messages=first)
        assert caught.value.status_code == 503
    answer = client.chat.completions.create(model="sim-1", messages=first)
    assert answer.choices[0].message.content is not None
    # Another conversation, the same directive: its own first requests fail.
    other = [{"role": "system", "content": "terse"}, *first]
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="sim-1", messages=other)
    assert client.chat.completions.create(model="sim-1", messages=first).choices


def test_garbage_body_breaks_the_sdk(client: openai.OpenAI) -> None:
    # The SDK hands a 200 application/json body straight to the JSON parser,
    # so the decoder's own error escapes rather than an openai exception.
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model="sim-1", messages=_user("[[garbage]]"))


def test_invalid_body_is_400(base_url: str) -> None:
    for body in (b"not json", b'{"model": "sim-1"}', b'{"messages": "hi"}'):
        response = httpx.post(f"{base_url}/v1/chat/completions", content=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] is None
        assert error["code"] is None
        assert error["message"]


def test_streaming_text_with_usage(client: openai.OpenAI) -> None:
    messages = _user("[[reply:The quick brown fox jumps over the lazy dog.]]")
    plain = client.chat.completions.create(model="sim-1", messages=messages)

    stream = client.chat.completions.create(
        model="sim-1", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    pieces: list[str] = []
    finish: list[str] = []
    usage = None
    ids: set[str] = set()
    with stream:
        for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            ids.add(chunk.id)
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                if choice.finish_reason:
                    finish.append(choice.finish_reason)

    assert "".join(pieces) == plain.choices[0].message.content
    assert "".join(pieces) == "The quick brown fox jumps over the lazy dog."
    assert len(pieces) == 9  # one chunk per word
    assert len(ids) == 1
    assert ids.pop().startswith("chatcmpl-")
    assert finish == ["stop"]
    assert usage is not None
    assert plain.usage is not None
    assert usage.model_dump() == plain.usage.model_dump()


def test_streaming_tool_calls(client: openai.OpenAI) -> None:
    messages = _user(PARALLEL_PROMPT)
    plain = client.chat.completions.create(model="sim-1", messages=messages, tools=TOOLS)
    assert plain.choices[0].message.tool_calls is not None
    expected = [
        (c.id, c.function.name, c.function.arguments)  # type: ignore[union-attr]
        for c in plain.choices[0].message.tool_calls
    ]

    streamed: dict[int, list[str]] = {}
    finish: list[str] = []
    with client.chat.completions.create(
        model="sim-1", messages=messages, tools=TOOLS, stream=True
    ) as stream:
        for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    entry = streamed.setdefault(delta.index, ["", "", ""])
                    assert delta.function is not None
                    entry[0] += delta.id or ""
                    entry[1] += delta.function.name or ""
                    entry[2] += delta.function.arguments or ""
                if choice.finish_reason:
                    finish.append(choice.finish_reason)

    assert [tuple(streamed[i]) for i in sorted(streamed)] == expected
    assert finish == ["tool_calls"]


def test_models_list(client: openai.OpenAI, base_url: str) -> None:
    models = client.models.list()
    assert [m.id for m in models] == ["sim-1", "sim-2"]
    assert all(m.owned_by == "agentfleet-simulator" for m in models)
    prefixed = httpx.get(f"{base_url}/p/b/v1/models").json()
    assert [m["id"] for m in prefixed["data"]] == ["sim-1", "sim-2"]


def test_provider_prefix_is_counted(base_url: str) -> None:
    _reset(base_url)
    with openai.OpenAI(
        base_url=f"{base_url}/p/b/v1", api_key="other", max_retries=0, timeout=10
    ) as sdk:
        result = sdk.chat.completions.create(model="sim-1", messages=_user("hi"))
        sdk.chat.completions.create(model="sim-1", messages=_user("hi again"))
    assert result.choices[0].message.content == "Echo: hi"

    stats = _stats(base_url)
    assert stats["requests"] == 2
    assert stats["by_provider"] == {"b": 2}


def test_tags_and_reset(client: openai.OpenAI, base_url: str) -> None:
    _reset(base_url)
    for _ in range(3):
        client.chat.completions.create(model="sim-1", messages=_user("[[tag:x]] hi"))
    client.chat.completions.create(model="sim-1", messages=_user("[[tag:y]] hi"))
    # Errors are counted too: the count happens on arrival.
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="sim-1", messages=_user("[[tag:x]][[error:503]]"))

    stats = _stats(base_url)
    assert stats["requests"] == 5
    assert stats["by_provider"] == {"default": 5}
    assert stats["by_tag"] == {"x": 4, "y": 1}
    assert stats["in_flight"] == 0
    assert stats["max_in_flight"] >= 1

    _reset(base_url)
    assert _stats(base_url) == {
        "requests": 0,
        "by_provider": {},
        "by_tag": {},
        "in_flight": 0,
        "max_in_flight": 0,
    }


def test_latency_directive(client: openai.OpenAI) -> None:
    started = time.perf_counter()
    result = client.chat.completions.create(model="sim-1", messages=_user("[[latency:0.3]] hi"))
    elapsed = time.perf_counter() - started

    assert elapsed >= 0.3
    assert result.choices[0].message.content == "Echo: hi"


def test_concurrent_latency_is_not_blocking(base_url: str) -> None:
    async def run() -> tuple[list[str | None], float]:
        async with openai.AsyncOpenAI(
            base_url=f"{base_url}/v1", api_key="sim", max_retries=0, timeout=30
        ) as sdk:

            async def one(i: int) -> str | None:
                result = await sdk.chat.completions.create(
                    model="sim-1", messages=_user(f"[[latency:0.5]][[tag:conc]] n{i}")
                )
                return result.choices[0].message.content

            started = time.perf_counter()
            answers = await asyncio.gather(*(one(i) for i in range(200)))
            return list(answers), time.perf_counter() - started

    _reset(base_url)
    answers, elapsed = asyncio.run(run())

    assert answers == [f"Echo: n{i}" for i in range(200)]
    # 200 sequential waits would take 100 s; overlapping ones take ~0.5 s.
    assert 0.5 <= elapsed < 5
    stats = _stats(base_url)
    assert stats["by_tag"] == {"conc": 200}
    assert stats["max_in_flight"] >= 50


# --- Runtime fault injection per provider ---------------------------------


@pytest.fixture
def sim(base_url: str) -> Iterator[str]:
    """The simulator URL, with faults, counters and call logs reset around the test."""
    _reset(base_url)
    yield base_url
    _reset(base_url)


def _provider_sdk(base_url: str, provider: str, timeout: float = 10) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base_url}/p/{provider}/v1", api_key="sim", max_retries=0, timeout=timeout
    )


def _providers(base_url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{base_url}/_sim/providers").json()["providers"]
    return result


def _calls(base_url: str, provider: str, since: float | None = None) -> list[float]:
    params = {} if since is None else {"since": repr(since)}
    response = httpx.get(f"{base_url}/_sim/providers/{provider}/calls", params=params)
    response.raise_for_status()
    body = response.json()
    assert body["provider"] == provider
    times: list[float] = body["times"]
    return times


def test_fault_500_hits_only_its_provider(sim: str) -> None:
    answer = set_faults(sim, "a", status=500)
    assert answer == {
        "provider": "a",
        "faults": {
            "error_rate": 1.0,
            "status": 500,
            "retry_after": None,
            "hang": False,
            "hang_seconds": 300.0,
            "latency": None,
            "code": None,
        },
    }

    with _provider_sdk(sim, "a") as a, _provider_sdk(sim, "b") as b:
        for _ in range(3):
            with pytest.raises(openai.InternalServerError) as caught:
                a.chat.completions.create(model="sim-1", messages=_user("hi"))
            assert caught.value.status_code == 500
            assert isinstance(caught.value.body, dict)
            assert caught.value.body["type"] == "server_error"
            assert caught.value.body["code"] is None
            assert "retry-after" not in caught.value.response.headers
        result = b.chat.completions.create(model="sim-1", messages=_user("hi"))
    assert result.choices[0].message.content == "Echo: hi"

    providers = _providers(sim)
    assert providers["a"]["requests"] == 3
    assert providers["a"]["errors_sent"] == 3
    assert providers["a"]["in_flight"] == 0
    assert providers["a"]["faults"]["status"] == 500
    assert providers["b"] == {
        "faults": None,
        "usage": None,
        "requests": 1,
        "errors_sent": 0,
        "in_flight": 0,
    }


def test_fault_error_rate_is_mixed_and_reproducible(sim: str) -> None:
    def run() -> list[int]:
        statuses: list[int] = []
        with _provider_sdk(sim, "a") as sdk:
            for i in range(40):
                try:
                    sdk.chat.completions.create(model="sim-1", messages=_user(f"n{i}"))
                    statuses.append(200)
                except openai.InternalServerError as exc:
                    statuses.append(exc.status_code)
        return statuses

    set_faults(sim, "a", status=503, error_rate=0.5)
    first = run()
    assert set(first) == {200, 503}
    assert _providers(sim)["a"]["errors_sent"] == first.count(503)

    # Setting the faults again restarts the seeded sequence: same pattern.
    set_faults(sim, "a", status=503, error_rate=0.5)
    assert run() == first

    set_faults(sim, "a", status=503, error_rate=0.0)
    assert run() == [200] * 40


def test_fault_429_carries_retry_after_headers(sim: str) -> None:
    set_faults(sim, "a", status=429, retry_after=2)
    with _provider_sdk(sim, "a") as sdk, pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="sim-1", messages=_user("hi"))
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.response.headers["retry-after-ms"] == "2000"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "rate_limit_error"
    assert caught.value.body["code"] == "rate_limit_exceeded"

    # Whole seconds are rounded up so a client never retries too early.
    set_faults(sim, "a", status=503, retry_after=0.25)
    response = httpx.post(f"{sim}/p/a/v1/chat/completions", json={"messages": _user("hi")})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["retry-after-ms"] == "250"
    assert response.json()["error"]["type"] == "server_error"


def test_fault_code_names_the_error(sim: str) -> None:
    set_faults(sim, "a", status=429, code="insufficient_quota")
    with _provider_sdk(sim, "a") as sdk, pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="sim-1", messages=_user("hi"))
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "insufficient_quota"
    assert caught.value.code == "insufficient_quota"


def test_fault_hang_times_out_then_answers_504(sim: str) -> None:
    set_faults(sim, "a", hang=True, hang_seconds=0.5)
    with _provider_sdk(sim, "a", timeout=0.2) as sdk, pytest.raises(openai.APITimeoutError):
        sdk.chat.completions.create(model="sim-1", messages=_user("hi"))

    started = time.perf_counter()
    with _provider_sdk(sim, "a", timeout=5) as sdk, pytest.raises(openai.InternalServerError) as e:
        sdk.chat.completions.create(model="sim-1", messages=_user("hi"))
    assert time.perf_counter() - started >= 0.5
    assert e.value.status_code == 504
    # Only the answered hang counts as sent; the abandoned one was never answered.
    assert _providers(sim)["a"]["errors_sent"] == 1
    assert _providers(sim)["a"]["requests"] == 2


def test_fault_hang_ends_when_the_client_leaves(sim: str) -> None:
    set_faults(sim, "a", hang=True, hang_seconds=30)
    with _provider_sdk(sim, "a", timeout=0.2) as sdk, pytest.raises(openai.APITimeoutError):
        sdk.chat.completions.create(model="sim-1", messages=_user("hi"))

    # The server notices the disconnect instead of holding the request for 30 s.
    deadline = time.monotonic() + 3
    while _providers(sim)["a"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _providers(sim)["a"]["in_flight"] == 0
    assert _providers(sim)["a"]["errors_sent"] == 0
    assert _stats(sim)["in_flight"] == 0


def test_fault_latency_applies_to_its_provider_only(sim: str) -> None:
    set_faults(sim, "a", latency=0.3)
    with _provider_sdk(sim, "a") as a, _provider_sdk(sim, "b") as b:
        started = time.perf_counter()
        # The fault overrides the prompt's own latency; other directives still apply.
        slow = a.chat.completions.create(model="sim-1", messages=_user("[[latency:5]][[reply:ok]]"))
        slow_elapsed = time.perf_counter() - started

        started = time.perf_counter()
        fast = b.chat.completions.create(model="sim-1", messages=_user("hi"))
        fast_elapsed = time.perf_counter() - started

    assert slow.choices[0].message.content == "ok"
    assert 0.3 <= slow_elapsed < 3
    assert fast.choices[0].message.content == "Echo: hi"
    assert fast_elapsed < 0.3


def test_calls_log_filters_by_since(sim: str) -> None:
    set_faults(sim, "a", status=500)
    started = time.time()
    with _provider_sdk(sim, "a") as sdk:
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                sdk.chat.completions.create(model="sim-1", messages=_user("hi"))
        time.sleep(0.05)
        window = time.time()
        time.sleep(0.05)
        quiet_end = time.time()
        clear_faults(sim, "a")
        sdk.chat.completions.create(model="sim-1", messages=_user("hi"))
    finished = time.time()

    # Failed calls are logged too: arrival is recorded before any fault applies.
    every = _calls(sim, "a")
    assert len(every) == 3
    assert every == sorted(every)
    assert started <= every[0]
    assert every[-1] <= finished
    assert _calls(sim, "a", since=window) == every[2:]
    assert not [t for t in every if window <= t < quiet_end]
    assert _calls(sim, "a", since=finished + 1) == []
    assert _calls(sim, "never-called") == []

    response = httpx.get(f"{sim}/_sim/providers/a/calls", params={"since": "soon"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "since"


def test_delete_clears_faults(sim: str) -> None:
    set_faults(sim, "a", status=500)
    with _provider_sdk(sim, "a") as sdk:
        with pytest.raises(openai.InternalServerError):
            sdk.chat.completions.create(model="sim-1", messages=_user("hi"))
        assert clear_faults(sim, "a") == {"provider": "a", "faults": None}
        result = sdk.chat.completions.create(model="sim-1", messages=_user("hi"))

    assert result.choices[0].message.content == "Echo: hi"
    assert _providers(sim)["a"] == {
        "faults": None,
        "usage": None,
        "requests": 2,
        "errors_sent": 1,
        "in_flight": 0,
    }
    got = httpx.get(f"{sim}/_sim/providers/a/faults").json()
    assert got == {"provider": "a", "faults": None}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"not json", None),
        (b"[1]", None),
        (b'{"status": 200}', "status"),
        (b'{"status": 600}', "status"),
        (b'{"status": "500"}', "status"),
        (b'{"status": true}', "status"),
        (b'{"error_rate": 1.5}', "error_rate"),
        (b'{"error_rate": -0.1}', "error_rate"),
        (b'{"retry_after": "2"}', "retry_after"),
        (b'{"hang": "yes"}', "hang"),
        (b'{"hang_seconds": -1}', "hang_seconds"),
        (b'{"latency": NaN}', "latency"),
        (b'{"code": 7}', "code"),
        (b'{"code": ""}', "code"),
        (b'{"latency": 1, "stauts": 500}', "stauts"),
    ],
)
def test_bad_fault_bodies_are_400(sim: str, body: bytes, param: str | None) -> None:
    response = httpx.put(f"{sim}/_sim/providers/a/faults", content=body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    # A refused body configures nothing.
    assert "a" not in _providers(sim)


def test_set_faults_raises_on_refusal(sim: str) -> None:
    with pytest.raises(httpx.HTTPStatusError) as caught:
        set_faults(sim, "a", status=200)
    assert caught.value.response.status_code == 400


def test_reset_clears_faults_and_call_logs(sim: str) -> None:
    set_faults(sim, "a", status=500)
    set_faults(sim, "b", latency=0.1)
    with _provider_sdk(sim, "a") as sdk, pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="sim-1", messages=_user("hi"))
    assert len(_calls(sim, "a")) == 1

    _reset(sim)

    assert _providers(sim) == {}
    assert _calls(sim, "a") == []
    with _provider_sdk(sim, "a") as sdk:
        result = sdk.chat.completions.create(model="sim-1", messages=_user("hi"))
    assert result.choices[0].message.content == "Echo: hi"
    assert _providers(sim)["a"]["faults"] is None


def test_faults_cli(sim: str, capsys: pytest.CaptureFixture[str]) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "agentfleet.simulator.faults", "--url", sim, "--provider", "a"),
            *("--status", "429", "--error-rate", "0.25", "--retry-after", "2"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    faults = json.loads(done.stdout)["faults"]
    assert faults["status"] == 429
    assert faults["error_rate"] == 0.25
    assert faults["retry_after"] == 2.0
    assert _providers(sim)["a"]["faults"] == faults

    assert faults_main(["--url", sim, "--provider", "a", "--hang", "--latency", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["faults"] == {
        "error_rate": 0.0,
        "status": 500,
        "retry_after": None,
        "hang": True,
        "hang_seconds": 300.0,
        "latency": 0.5,
        "code": None,
    }
    assert faults_main(["--url", sim, "--provider", "a", "--status", "200"]) == 1
    assert "refused (400)" in capsys.readouterr().err
    assert faults_main(["--url", sim, "--provider", "a", "--clear"]) == 0
    assert json.loads(capsys.readouterr().out) == {"provider": "a", "faults": None}
    assert _providers(sim)["a"]["faults"] is None


def test_calls_log_keeps_the_admission_time_sent_by_the_fleet(sim: str) -> None:
    with _provider_sdk(sim, "adm") as sdk:
        sdk.chat.completions.create(
            model="sim-1",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-agentfleet-admitted-at": "1234.5678"},
        )
        sdk.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": "x"}])
    body = httpx.get(f"{sim}/_sim/providers/adm/calls").json()
    assert len(body["times"]) == 2
    assert body["admitted"] == [1234.5678, None]
