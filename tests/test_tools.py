"""``@tool``: schemas from annotations, validated arguments, safe built-ins."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import pytest
from pydantic import Field

from tasks.errors import ConfigError, ToolArgumentsError, UnknownToolError
from tasks.tools import ToolRegistry, load_tool_modules, registry
from tasks.tools._registry import _make_tool
from tests.conftest import Fleet


def test_schema_is_derived_from_annotations_and_docstring() -> None:
    def search(
        query: str,
        limit: Annotated[int, Field(ge=1, le=10)] = 3,
        kind: Literal["web", "news"] = "web",
    ) -> list[str]:
        """Search something.

        Longer text that is not part of the description."""
        return [query] * limit

    t = _make_tool(search, None, None, None)
    schema = t.openai_schema
    assert schema["function"]["name"] == "search"
    assert schema["function"]["description"] == "Search something."
    params = schema["function"]["parameters"]
    assert params["required"] == ["query"]
    assert params["properties"]["limit"]["maximum"] == 10
    assert params["properties"]["kind"]["enum"] == ["web", "news"]
    assert params["additionalProperties"] is False
    assert t.invoke('{"query": "q", "limit": 2}') == ["q", "q"]
    with pytest.raises(ToolArgumentsError, match="limit"):
        t.invoke({"query": "q", "limit": 11})
    with pytest.raises(ToolArgumentsError, match="not valid JSON"):
        t.invoke("{nope")
    with pytest.raises(ToolArgumentsError, match="must be a JSON object"):
        t.invoke("[1, 2]")


def test_unannotated_parameters_and_duplicate_names_are_refused() -> None:
    def bad(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(ConfigError, match="needs a type annotation"):
        _make_tool(bad, None, None, None)
    reg = ToolRegistry()

    def one() -> int:
        return 1

    def two() -> int:
        return 2

    reg.add(_make_tool(one, "same", None, None))
    with pytest.raises(ConfigError, match="two tools are named 'same'"):
        reg.add(_make_tool(two, "same", None, None))
    with pytest.raises(UnknownToolError):
        reg.get("other")


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7.0),
        ("(1 + 2) * 3", 9.0),
        ("2 ** 10", 1024.0),
        ("sqrt(16) + abs(-2)", 6.0),
        ("round(pi, 2)", 3.14),
        ("-7 // 2", -4.0),
        ("max(1, 5, 3) % 3", 2.0),
    ],
)
def test_calculator(expression: str, value: float) -> None:
    assert registry.get("calculator").invoke({"expression": expression}) == value


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("__import__('os').system('true')", "unsupported expression"),
        ("open('/etc/passwd')", "unsupported expression"),
        ("(1).__class__", "unsupported expression"),
        ("9 ** 9 ** 9", "too large"),
        ("1 / 0", "division by zero"),
        ("1 +", "not an arithmetic expression"),
        ("'a' * 3", "unsupported expression"),
    ],
)
def test_calculator_refuses_anything_but_arithmetic(expression: str, says: str) -> None:
    with pytest.raises(ToolArgumentsError, match=says):
        registry.get("calculator").invoke({"expression": expression})


def test_other_builtins() -> None:
    doc = '{"items": [{"name": "a"}, {"name": "b"}]}'
    assert registry.get("json_extract").invoke({"document": doc, "path": "items.1.name"}) == "b"
    with pytest.raises(ToolArgumentsError, match="not found"):
        registry.get("json_extract").invoke({"document": doc, "path": "items.5"})
    assert registry.get("text_stats").invoke({"text": "a b\nc"}) == {
        "characters": 5,
        "words": 3,
        "lines": 2,
    }
    assert registry.get("transform_text").invoke({"text": "abc", "operation": "reverse"}) == "cba"
    assert registry.get("current_time").invoke({"timezone": "Asia/Tokyo"}).endswith("+09:00")
    with pytest.raises(ToolArgumentsError, match="unknown time zone"):
        registry.get("current_time").invoke({"timezone": "Mars/Base"})


def test_user_modules_load_by_configuration() -> None:
    load_tool_modules(["tests.tooling"])
    assert "record_sleep" in registry
    assert "explode" in registry
    with pytest.raises(ConfigError, match=r"cannot import tool module 'no\.such\.module'"):
        load_tool_modules(["no.such.module"])


def test_async_tool_is_awaited() -> None:
    async def fetch(n: int) -> dict[str, int]:
        """Fetch something slowly."""
        await asyncio.sleep(0)
        return {"n": n * 2}

    assert _make_tool(fetch, None, None, None).invoke({"n": 21}) == {"n": 42}


def test_async_tool_runs_on_the_tools_worker(fleet: Fleet) -> None:
    accepted = fleet.client.create_tool_call("async_double", {"n": 21})
    call = fleet.client.wait_tool_call(accepted.id, timeout=30)
    assert call.status == "succeeded", call.result
    assert call.result is not None
    assert call.result["output"] == 42


def test_async_tool_stops_at_its_soft_time_limit(fleet: Fleet) -> None:
    accepted = fleet.client.create_tool_call("async_sleep", {"seconds": 30})
    call = fleet.client.wait_tool_call(accepted.id, timeout=25)
    assert call.status == "failed"
    assert call.result is not None
    assert call.result["error"] == {
        "code": "tool_failed",
        "message": "tool 'async_sleep' timed out",
    }
