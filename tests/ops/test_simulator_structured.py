"""The simulator's structured output, model settings, usage and recorded requests.

Through the real openai SDK against ``python -m agentfleet.simulator`` over HTTP; requests
the SDK would refuse to build go through httpx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from agentfleet.simulator.control import (
    clear_usage,
    last_seq,
    recorded_requests,
    reset,
    set_usage,
)

from .conftest import running_simulator

pytestmark = pytest.mark.timeout(60)

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": {}}},
    }
    for name in ("lookup", "search", "fetch")
]

#: Every kind of value the answer builder fills, with $defs/$ref, enums and nullable types.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "kind": {"type": "string", "enum": ["report", "memo"]},
        "count": {"type": "integer"},
        "score": {"type": "number", "minimum": 1.5},
        "done": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "author": {"$ref": "#/$defs/person"},
        "note": {"type": ["string", "null"]},
        "ignored": {"type": "string"},
    },
    "required": ["title", "kind", "count", "score", "done", "tags", "author", "note"],
    "$defs": {
        "person": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        }
    },
}
EXPECTED = {
    "title": "Summarise the week",
    "kind": "report",
    "count": 0,
    "score": 1.5,
    "done": True,
    "tags": ["Summarise the week"],
    "author": {"name": "Summarise the week", "age": 0},
    "note": "Summarise the week",
}
STRICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["answer", "n"],
    "additionalProperties": False,
}


def _schema_format(schema: dict[str, Any], strict: bool = False) -> Any:
    return {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": schema, "strict": strict},
    }


def _user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_simulator() as url:
        yield url


@pytest.fixture
def sim(base_url: str) -> Iterator[str]:
    """The module's simulator, reset before and after the test."""
    reset(base_url)
    yield base_url
    reset(base_url)


@pytest.fixture
def client(sim: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{sim}/v1", api_key="sim", max_retries=0, timeout=10) as sdk:
        yield sdk


def _stream_text(client: openai.OpenAI, **kwargs: Any) -> tuple[str, str | None, Any]:
    """Stream a completion; return its text, finish reason and usage."""
    text, finish, usage = "", None, None
    stream = client.chat.completions.create(
        model="sim-1", stream=True, stream_options={"include_usage": True}, **kwargs
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, finish, usage


# --- response_format ---------------------------------------------------------------------


def test_json_schema_answer_is_a_deterministic_instance(client: openai.OpenAI) -> None:
    kwargs: Any = {
        "messages": _user("Summarise the week"),
        "response_format": _schema_format(SCHEMA),
    }
    result = client.chat.completions.create(model="sim-1", **kwargs)

    assert result.choices[0].finish_reason == "stop"
    content = result.choices[0].message.content
    assert content is not None
    assert json.loads(content) == EXPECTED
    text, finish, _ = _stream_text(client, **kwargs)
    assert (text, finish) == (content, "stop")


def test_strict_schema_and_tool_results_still_answer_json(client: openai.OpenAI) -> None:
    fmt = _schema_format(STRICT_SCHEMA, strict=True)
    prompt = "call lookup {} and answer"
    first = client.chat.completions.create(
        model="sim-1", messages=_user(prompt), tools=TOOLS, response_format=fmt
    )
    call = first.choices[0].message.tool_calls
    assert call is not None
    messages: list[Any] = [
        *_user(prompt),
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call[0].id, "content": "42"},
    ]
    final = client.chat.completions.create(
        model="sim-1", messages=messages, tools=TOOLS, response_format=fmt
    )

    assert json.loads(final.choices[0].message.content or "") == {"answer": "and answer", "n": 0}


def test_json_object_wraps_the_plain_answer(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="sim-1",
        messages=_user("Reply in JSON please"),
        response_format={"type": "json_object"},
    )
    assert json.loads(result.choices[0].message.content or "") == {
        "answer": "Echo: Reply in JSON please"
    }


def test_text_response_format_changes_nothing(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="sim-1", messages=_user("hi"), response_format={"type": "text"}
    )
    assert result.choices[0].message.content == "Echo: hi"


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "yaml"}, "response_format.type"),
        ("json", "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"schema": {}}},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}},
            "response_format.json_schema.strict",
        ),
        # strict needs additionalProperties: false and every property required.
        (_schema_format(SCHEMA, strict=True), "response_format.json_schema"),
        (
            _schema_format({**STRICT_SCHEMA, "required": ["answer"]}, strict=True),
            "response_format.json_schema",
        ),
        # json_object needs the word "json" in the messages.
        ({"type": "json_object"}, "messages"),
    ],
)
def test_malformed_response_format_is_400(
    client: openai.OpenAI, response_format: Any, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="sim-1", messages=_user("hi"), response_format=response_format
        )
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "invalid_request_error"
    assert caught.value.body["param"] == param


def test_json_directive_answers_exactly_its_text(client: openai.OpenAI) -> None:
    directive = '{"a": [[1, 2]], "b": "x]]y"}'
    prompt = f"go [[json: {directive} ]] now"
    plain = client.chat.completions.create(model="sim-1", messages=_user(prompt))
    structured = client.chat.completions.create(
        model="sim-1", messages=_user(prompt), response_format=_schema_format(SCHEMA)
    )

    assert plain.choices[0].message.content == directive
    assert structured.choices[0].message.content == directive
    # The directive is not part of the prompt the answers echo.
    echoed = client.chat.completions.create(
        model="sim-1", messages=_user(prompt + " [[invalid:1]]")
    )
    assert echoed.choices[0].message.content == "Sorry, this answer is not JSON."


# --- [[invalid:N]] -------------------------------------------------------------------------


def _answers(client: openai.OpenAI, prompt: str, count: int, **kwargs: Any) -> list[str]:
    """The final answers of a conversation that asks for a fix after each one, as the fleet
    does: a user message named ``output_repair`` (the turn goes on)."""
    messages: list[Any] = _user(prompt)
    answers: list[str] = []
    for _ in range(count):
        result = client.chat.completions.create(model="sim-1", messages=messages, **kwargs)
        content = result.choices[0].message.content or ""
        answers.append(content)
        messages += [
            {"role": "assistant", "content": content},
            {"role": "user", "name": "output_repair", "content": "fix"},
        ]
    return answers


def test_invalid_answers_come_first_then_a_valid_one(client: openai.OpenAI) -> None:
    fmt = _schema_format(SCHEMA)
    answers = _answers(client, "Summarise the week [[invalid:3]]", 5, response_format=fmt)

    assert answers[0] == "Sorry, this answer is not JSON."
    with pytest.raises(ValueError, match="Expecting value"):
        json.loads(answers[0])
    # JSON, but the first required property is missing.
    assert json.loads(answers[1]) == {k: v for k, v in EXPECTED.items() if k != "title"}
    assert answers[2] == answers[0]
    assert json.loads(answers[3]) == EXPECTED
    assert answers[4] == answers[3]


def test_invalid_counts_final_answers_only(client: openai.OpenAI) -> None:
    prompt = 'call lookup {"k": 1} [[invalid:1]] [[json:{"ok": true}]]'
    messages: list[Any] = _user(prompt)
    first = client.chat.completions.create(model="sim-1", messages=messages, tools=TOOLS)
    calls = first.choices[0].message.tool_calls
    assert calls is not None
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "1"},
    ]
    # The tool-calling turn is not a final answer: this is still the first one.
    second = client.chat.completions.create(model="sim-1", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "Sorry, this answer is not JSON."
    messages += [
        {"role": "assistant", "content": "nope"},
        {"role": "user", "name": "output_repair", "content": "again"},
    ]
    third = client.chat.completions.create(model="sim-1", messages=messages, tools=TOOLS)
    assert third.choices[0].message.content == '{"ok": true}'


def test_invalid_without_a_schema_breaks_the_json_object(client: openai.OpenAI) -> None:
    answers = _answers(
        client, "json please [[invalid:2]]", 3, response_format={"type": "json_object"}
    )
    assert answers[1] == "[]"
    assert json.loads(answers[2]) == {"answer": "Echo: json please"}


# --- usage ---------------------------------------------------------------------------------


def test_usage_directive(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="sim-1", messages=_user("hi [[usage:1200,34]]"))
    cached = client.chat.completions.create(
        model="sim-1", messages=_user("hi [[usage:1200, 34, 1000]]")
    )

    assert plain.usage is not None
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (1200, 34)
    assert plain.usage.total_tokens == 1234
    assert plain.usage.prompt_tokens_details is None
    assert cached.usage is not None
    assert cached.usage.prompt_tokens_details is not None
    assert cached.usage.prompt_tokens_details.cached_tokens == 1000
    _, _, streamed = _stream_text(client, messages=_user("hi [[usage:7,8,3]]"))
    assert (streamed.prompt_tokens, streamed.completion_tokens, streamed.total_tokens) == (7, 8, 15)
    assert streamed.prompt_tokens_details.cached_tokens == 3


def test_usage_applies_to_tool_calling_turns_too(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="sim-1", messages=_user("call lookup [[usage:5,6]]"), tools=TOOLS
    )
    assert result.choices[0].finish_reason == "tool_calls"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (5, 6)


def test_provider_default_usage(sim: str) -> None:
    answer = set_usage(sim, "a", prompt_tokens=100, completion_tokens=10, cached_tokens=60)
    assert answer == {
        "provider": "a",
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "cached_tokens": 60},
    }
    with openai.OpenAI(base_url=f"{sim}/p/a/v1", api_key="sim", max_retries=0) as a:
        configured = a.chat.completions.create(model="sim-1", messages=_user("hi"))
        scripted = a.chat.completions.create(model="sim-1", messages=_user("hi [[usage:1,2]]"))
        clear_usage(sim, "a")
        computed = a.chat.completions.create(model="sim-1", messages=_user("hi"))
    with openai.OpenAI(base_url=f"{sim}/v1", api_key="sim", max_retries=0) as other:
        elsewhere = other.chat.completions.create(model="sim-1", messages=_user("hi"))

    assert configured.usage is not None
    assert configured.usage.prompt_tokens == 100
    assert configured.usage.prompt_tokens_details is not None
    assert configured.usage.prompt_tokens_details.cached_tokens == 60
    assert scripted.usage is not None
    assert (scripted.usage.prompt_tokens, scripted.usage.completion_tokens) == (1, 2)
    assert computed.usage is not None
    assert computed.usage.prompt_tokens == len("hi") // 4 + 1
    assert elsewhere.usage is not None
    assert elsewhere.usage.prompt_tokens == len("hi") // 4 + 1


def test_reset_clears_default_usage(sim: str) -> None:
    set_usage(sim, "a", prompt_tokens=100, completion_tokens=10)
    reset(sim)
    assert httpx.get(f"{sim}/_sim/providers/a/usage").json() == {"provider": "a", "usage": None}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"not json", None),
        (b"[1]", None),
        (b'{"prompt_tokens": 1}', "completion_tokens"),
        (b'{"prompt_tokens": -1, "completion_tokens": 1}', "prompt_tokens"),
        (b'{"prompt_tokens": 1, "completion_tokens": true}', "completion_tokens"),
        (b'{"prompt_tokens": 1, "completion_tokens": 1, "cached_tokens": "x"}', "cached_tokens"),
        (b'{"prompt_tokens": 1, "completion_tokens": 1, "total": 2}', "total"),
    ],
)
def test_bad_usage_settings_are_400(sim: str, body: bytes, param: str | None) -> None:
    response = httpx.put(f"{sim}/_sim/providers/a/usage", content=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


# --- model settings ------------------------------------------------------------------------


def test_settings_are_accepted_and_recorded(client: openai.OpenAI, sim: str) -> None:
    settings: dict[str, Any] = {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 500,
        "seed": 7,
        "stop": ["END"],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning_effort": "low",
        "presence_penalty": -1.5,
    }
    result = client.chat.completions.create(
        model="sim-1", messages=_user("hi [[tag:settings]]"), tools=TOOLS, **settings
    )
    assert result.choices[0].message.content == "Echo: hi"

    (recorded,) = recorded_requests(sim, tag="settings")
    assert {key: recorded["body"][key] for key in settings} == settings


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.1}, "top_p"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 2.5}, "max_completion_tokens"),
        ({"seed": "7"}, "seed"),
        ({"seed": True}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"tool_choice": "always", "tools": TOOLS}, "tool_choice"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": TOOLS},
            "tool_choice",
        ),
        ({"tool_choice": {"type": "function"}, "tools": TOOLS}, "tool_choice"),
        ({"tool_choice": "none"}, "tool_choice"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"parallel_tool_calls": "no", "tools": TOOLS}, "parallel_tool_calls"),
    ],
)
def test_out_of_range_settings_are_400(sim: str, extra: dict[str, Any], param: str) -> None:
    body = {"model": "sim-1", "messages": _user("hi"), **extra}
    response = httpx.post(f"{sim}/v1/chat/completions", json=body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    # Refused requests are still recorded, as sent.
    assert recorded_requests(sim)[-1]["body"] == body


def test_out_of_range_setting_through_the_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="sim-1", messages=_user("hi"), temperature=2.01)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "temperature"


def test_max_tokens_cuts_the_answer(client: openai.OpenAI) -> None:
    messages = _user("[[reply:one two three four five six]]")
    result = client.chat.completions.create(model="sim-1", messages=messages, max_tokens=3)
    newer = client.chat.completions.create(
        model="sim-1", messages=messages, max_completion_tokens=100, max_tokens=2
    )
    roomy = client.chat.completions.create(model="sim-1", messages=messages, max_tokens=100)

    # A token is four characters.
    assert result.choices[0].message.content == "one two thre"
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 3
    assert newer.choices[0].message.content == "one two "
    assert roomy.choices[0].message.content == "one two three four five six"
    assert roomy.choices[0].finish_reason == "stop"
    text, finish, usage = _stream_text(client, messages=messages, max_tokens=3)
    assert (text, finish, usage.completion_tokens) == ("one two thre", "length", 3)


def test_max_tokens_can_break_a_json_answer(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="sim-1",
        messages=_user("Summarise the week"),
        response_format=_schema_format(SCHEMA),
        max_tokens=5,
    )
    content = result.choices[0].message.content or ""
    assert result.choices[0].finish_reason == "length"
    assert len(content) == 20
    with pytest.raises(ValueError, match="Unterminated string"):
        json.loads(content)


def test_stop_cuts_at_the_first_stop_string(client: openai.OpenAI) -> None:
    messages = _user("[[reply:alpha beta. gamma; delta]]")
    one = client.chat.completions.create(model="sim-1", messages=messages, stop=";")
    many = client.chat.completions.create(model="sim-1", messages=messages, stop=[";", "."])
    absent = client.chat.completions.create(model="sim-1", messages=messages, stop="zzz")

    assert one.choices[0].message.content == "alpha beta. gamma"
    assert one.choices[0].finish_reason == "stop"
    assert many.choices[0].message.content == "alpha beta"
    assert absent.choices[0].message.content == "alpha beta. gamma; delta"
    text, finish, _ = _stream_text(client, messages=messages, stop=["."])
    assert (text, finish) == ("alpha beta", "stop")


PROMPT = 'call lookup {"key": "a"} call search {"q": "x"}'


def test_tool_choice_none_never_calls(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="sim-1", messages=_user(PROMPT + " done"), tools=TOOLS, tool_choice="none"
    )
    assert result.choices[0].finish_reason == "stop"
    assert result.choices[0].message.tool_calls is None
    assert result.choices[0].message.content == "Echo: done"


def test_tool_choice_named_calls_that_function(client: openai.OpenAI) -> None:
    def forced(name: str) -> list[tuple[str, str]]:
        result = client.chat.completions.create(
            model="sim-1",
            messages=_user(PROMPT),
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": name}},
        )
        calls = result.choices[0].message.tool_calls or []
        return [(call.function.name, call.function.arguments) for call in calls]  # type: ignore[union-attr]

    assert forced("search") == [("search", '{"q": "x"}')]
    # Not in the script: called with no arguments.
    assert forced("fetch") == [("fetch", "{}")]


def test_tool_choice_required_always_calls(client: openai.OpenAI) -> None:
    prompt = PROMPT
    first = client.chat.completions.create(
        model="sim-1", messages=_user(prompt), tools=TOOLS, tool_choice="required"
    )
    calls = first.choices[0].message.tool_calls or []
    messages: list[Any] = [
        *_user(prompt),
        first.choices[0].message.model_dump(exclude_none=True),
        *[{"role": "tool", "tool_call_id": call.id, "content": "r"} for call in calls],
    ]
    # The script's one round is done, but a call is still required.
    again = client.chat.completions.create(
        model="sim-1", messages=messages, tools=TOOLS, tool_choice="required"
    )
    unscripted = client.chat.completions.create(
        model="sim-1", messages=_user("hello"), tools=TOOLS, tool_choice="required"
    )

    assert again.choices[0].finish_reason == "tool_calls"
    assert len(again.choices[0].message.tool_calls or []) == 2
    (only,) = unscripted.choices[0].message.tool_calls or []
    assert (only.function.name, only.function.arguments) == ("lookup", "{}")  # type: ignore[union-attr]


def test_parallel_tool_calls_false_sends_one_call(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="sim-1", messages=_user(PROMPT), tools=TOOLS, parallel_tool_calls=False
    )
    names = [call.function.name for call in result.choices[0].message.tool_calls or []]  # type: ignore[union-attr]
    assert names == ["lookup"]

    stream = client.chat.completions.create(
        model="sim-1", messages=_user(PROMPT), tools=TOOLS, parallel_tool_calls=False, stream=True
    )
    streamed = [
        call.function.name
        for chunk in stream
        for choice in chunk.choices
        for call in choice.delta.tool_calls or []
        if call.function is not None
    ]
    assert streamed == ["lookup"]


# --- recorded requests ---------------------------------------------------------------------


def test_requests_are_recorded_with_seq_provider_and_tag(sim: str) -> None:
    start = last_seq(sim)
    with (
        openai.OpenAI(base_url=f"{sim}/p/a/v1", api_key="sim", max_retries=0) as a,
        openai.OpenAI(base_url=f"{sim}/v1", api_key="sim", max_retries=0) as default,
    ):
        a.chat.completions.create(model="sim-1", messages=_user("one [[tag:t1]]"), seed=1)
        default.chat.completions.create(model="sim-2", messages=_user("two [[tag:t2]] [[tag:t3]]"))
        a.chat.completions.create(model="sim-1", messages=_user("three [[tag:t2]]"))

    everything = recorded_requests(sim)
    assert [r["seq"] for r in everything] == [start + 1, start + 2, start + 3]
    assert [r["provider"] for r in everything] == ["a", "default", "a"]
    assert [r["tag"] for r in everything] == ["t1", "t2", "t2"]
    assert everything[1]["tags"] == ["t2", "t3"]
    assert everything[0]["body"]["seed"] == 1
    assert everything[1]["body"]["model"] == "sim-2"
    assert everything[1]["body"]["messages"] == _user("two [[tag:t2]] [[tag:t3]]")
    assert [r["seq"] for r in recorded_requests(sim, provider="a")] == [start + 1, start + 3]
    assert [r["seq"] for r in recorded_requests(sim, tag="t2")] == [start + 2, start + 3]
    assert [r["seq"] for r in recorded_requests(sim, tag="t3")] == [start + 2]
    assert [r["seq"] for r in recorded_requests(sim, provider="a", tag="t2")] == [start + 3]
    assert [r["seq"] for r in recorded_requests(sim, since=start + 1)] == [start + 2, start + 3]
    assert recorded_requests(sim, provider="nobody") == []
    assert last_seq(sim) == start + 3


def test_reset_clears_recorded_requests_but_not_the_sequence(sim: str) -> None:
    with openai.OpenAI(base_url=f"{sim}/v1", api_key="sim", max_retries=0) as sdk:
        sdk.chat.completions.create(model="sim-1", messages=_user("before"))
        before = last_seq(sim)
        reset(sim)
        assert recorded_requests(sim) == []
        sdk.chat.completions.create(model="sim-1", messages=_user("after"))

    (after,) = recorded_requests(sim)
    assert after["seq"] == before + 1


def test_faulted_requests_are_recorded(sim: str) -> None:
    httpx.put(f"{sim}/_sim/providers/a/faults", json={"status": 503}).raise_for_status()
    with (
        openai.OpenAI(base_url=f"{sim}/p/a/v1", api_key="sim", max_retries=0) as a,
        pytest.raises(openai.InternalServerError),
    ):
        a.chat.completions.create(model="sim-1", messages=_user("down [[tag:down]]"))
    assert [r["provider"] for r in recorded_requests(sim, tag="down")] == ["a"]


def test_bad_since_is_400(sim: str) -> None:
    response = httpx.get(f"{sim}/_sim/requests", params={"since": "yesterday"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "since"


def test_record_limit_keeps_the_latest() -> None:
    with (
        running_simulator("--record-requests", "2") as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="sim", max_retries=0) as sdk,
    ):
        for word in ("one", "two", "three"):
            sdk.chat.completions.create(model="sim-1", messages=_user(word))
        kept = recorded_requests(url)
    assert [r["seq"] for r in kept] == [2, 3]
    assert [r["body"]["messages"][0]["content"] for r in kept] == ["two", "three"]


def test_a_new_user_message_starts_a_turn_with_its_own_script(client: openai.OpenAI) -> None:
    """A thread's history comes before the run's own input: the script is the last input's,
    and the earlier turns count neither as answers nor as rounds."""
    history = [
        {"role": "user", "content": 'call lookup {"id": 1} [[invalid:1]]'},
        {"role": "assistant", "content": "Sorry, this answer is not JSON."},
    ]
    messages: list[Any] = [*history, {"role": "user", "content": "second [[reply:fine]]"}]
    result = client.chat.completions.create(model="sim-1", messages=messages)
    assert result.choices[0].message.content == "fine"


def test_a_schema_answer_takes_values_from_the_turns_tools(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "order_id": {"type": "string"},
            "status": {"type": "string", "enum": ["shipped", "unknown"]},
            "items": {"type": "integer"},
        },
        "required": ["order_id", "status", "items"],
        "additionalProperties": False,
    }
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": '{"order_id": "AB1"}'},
    }
    messages: list[Any] = [
        {"role": "user", "content": "where is it"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped", "items": "3"}'},
    ]
    result = client.chat.completions.create(
        model="sim-1", messages=messages, response_format=_schema_format(schema)
    )
    # items is "3" in the result: a string, not the integer the schema asks for, so built.
    assert json.loads(result.choices[0].message.content or "") == {
        "order_id": "AB1",
        "status": "shipped",
        "items": 0,
    }
