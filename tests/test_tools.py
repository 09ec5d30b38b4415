"""``@tool``: schemas from annotations, validated arguments, safe built-ins; and the fleet's
view of its tools, where workers deployed with different tool modules must never run a run
with fewer tools than it was accepted with."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import Field

from agentfleet.client import Client
from agentfleet.tasks.errors import ConfigError, ToolArgumentsError, UnknownToolError
from agentfleet.tasks.fleet import node_key
from agentfleet.tasks.tools import ToolRegistry, load_tool_modules, registry
from agentfleet.tasks.tools._registry import _make_tool
from ops.stack import PoolSpec, Stack, wait_for
from tests.agents import (
    billing,
    cached_echo,
    echo,
    frontdesk,
    planner,
    rater,
    recursive,
    researcher,
    strict_json,
    triage,
)
from tests.conftest import SHORT_LIMITS, Fleet, private_fleet


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


# --- the fleet's view ------------------------------------------------------------------------

#: The built-in tools a run that names none gets; every worker also has ask_human, which a run
#: must name (it stops the run to ask a person).
BUILTIN = ["calculator", "current_time", "json_extract", "text_stats", "transform_text", "wait"]
EVERY_BUILTIN = sorted([*BUILTIN, "ask_human"])
#: The API loads tests.tooling and tests.tooling_v1 and the agents of tests.agents; each
#: worker loads its own modules, and the agents worker no agents.
MIXED_ENV = SHORT_LIMITS | {
    "AGENTFLEET_TOOL_MODULES": "tests.tooling,tests.tooling_v1",
    "AGENTFLEET_AGENT_MODULES": "tests.agents",
    "AGENTFLEET_NODE_PUBLISH_INTERVAL": "1",
}
AGENTS = PoolSpec("agents", "threads", 4)
TOOLS_V1 = PoolSpec("tools", "prefork", 1, name="tools-v1")
TOOLS_V2 = PoolSpec("tools", "prefork", 1, name="tools-v2")


@dataclass
class Mixed:
    """A fleet whose agents worker has only the built-in tools, one tools worker
    tests.tooling_v1 and the other tests.tooling_v2; and a run the API accepted before any
    worker was up."""

    fleet: Fleet
    early_run: str


def _with_modules(stack: Stack, modules: str) -> dict[str, str]:
    # An empty variable counts as unset: no modules of one's own, the built-ins only.
    return stack.env() | {"AGENTFLEET_TOOL_MODULES": modules}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mixed]:
    stack = Stack(Path(tmp_path_factory.mktemp("mixed-tools")), env_overrides=MIXED_ENV)
    early: list[str] = []

    def start(stack: Stack) -> None:
        stack.start_redis()
        stack.start_simulator()
        stack.start_api()
        with Client(stack.api_url, api_key=stack.api_key) as client:
            # No worker is up, so none has published its tools: the API accepts the run.
            early.append(client.create_run('call shout {"text": "hi"}', tools=["shout"]).id)
        stack.start_worker(AGENTS, _with_modules(stack, "") | {"AGENTFLEET_AGENT_MODULES": ""})
        stack.start_worker(TOOLS_V1, _with_modules(stack, "tests.tooling_v1"))
        stack.start_worker(TOOLS_V2, _with_modules(stack, "tests.tooling_v2"))

    with private_fleet(stack, start, 3) as fleet:
        yield Mixed(fleet, early[0])


def _tools_view(fleet: Fleet) -> dict[str, Any]:
    response = fleet.http.get("/v1/tools")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _nodes(fleet: Fleet) -> set[str]:
    return {n["node"] for n in _tools_view(fleet).get("nodes", [])}


@pytest.fixture
def seen(mixed: Mixed) -> Fleet:
    """The mixed fleet once the API's view has its three workers."""
    wait_for(lambda: len(_nodes(mixed.fleet)) == 3, 30, "the API to see the three workers")
    return mixed.fleet


def _snapshot(fleet: Fleet) -> tuple[set[str], int, int]:
    queued = sum(int(fleet.redis.llen(q)) for q in ("agents", "tools", "batch"))
    return fleet.run_keys(), queued, fleet.sim_stats()["requests"]


def test_a_worker_lacking_a_tool_of_the_run_fails_it_and_names_the_tool(mixed: Mixed) -> None:
    run = mixed.fleet.client.wait(mixed.early_run, timeout=60)
    assert run.status == "failed", run
    assert run.error is not None
    assert run.error.code == "tools_unavailable"
    assert "shout" in run.error.message
    assert "worker agents-" in run.error.message  # the node that lacks it
    assert run.usage.llm_calls == 0  # never asked the model without the tool


def test_a_tool_no_live_worker_has_is_refused_and_nothing_is_enqueued(seen: Fleet) -> None:
    before = _snapshot(seen)
    # record_sleep: the API has it (tests.tooling), no worker does.
    response = seen.http.post(
        "/v1/runs", json={"input": "x", "tools": ["calculator", "record_sleep"]}
    )
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "tools"]
    assert "record_sleep" in problem["msg"]
    assert "calculator" not in problem["msg"]
    call = seen.http.post(
        "/v1/tool-calls", json={"name": "record_sleep", "arguments": {"key": "k", "seconds": 0}}
    )
    assert call.status_code == 422, call.text
    assert "record_sleep" in call.json()["detail"][0]["msg"]
    batch = seen.http.post(
        "/v1/batches", json={"items": [{"input": "x", "tools": ["record_sleep"]}]}
    )
    assert batch.status_code == 422, batch.text
    assert batch.json()["detail"][0]["loc"] == ["body", "items.0.tools"]
    assert _snapshot(seen) == before


def test_an_agent_no_live_agents_worker_has_is_refused_and_listed_as_such(seen: Fleet) -> None:
    before = _snapshot(seen)
    response = seen.http.post("/v1/runs", json={"agent": "echo", "input": "hi"})
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "agent"]
    assert "not declared on any live worker of queue agents" in problem["msg"]
    assert _snapshot(seen) == before
    listed = {a.name: a for a in seen.client.agents()}
    # The API has it; the tools workers publish it too, but they run no steps.
    assert listed["echo"].on_api
    assert "no live worker of queue agents has it" in listed["echo"].mismatches


def test_a_tool_only_tools_workers_have_is_refused_for_runs(seen: Fleet) -> None:
    # shout: both tools workers have it, the agents worker does not, so a run could never
    # offer it to the model; a tool call alone runs on a tools worker and is accepted.
    response = seen.http.post("/v1/runs", json={"input": "x", "tools": ["shout"]})
    assert response.status_code == 422, response.text
    message = response.json()["detail"][0]["msg"]
    assert "shout" in message
    assert "agents" in message
    accepted = seen.client.create_tool_call("shout", {"text": "hi"})
    call = seen.client.wait_tool_call(accepted.id, timeout=30)
    assert call.result is not None
    assert call.result["output"] == "HI"


def test_tools_omitted_means_the_tools_every_live_worker_has(seen: Fleet) -> None:
    run_id = seen.client.create_run('call calculator {"expression": "6*7"}').id
    run = seen.client.wait(run_id, timeout=60)
    assert run.status == "succeeded", run
    assert "42" in (run.result or "")
    stored = json.loads(
        seen.redis.hget(f"{seen.settings.redis.key_prefix}:run:{run_id}", "tools") or ""
    )
    assert stored == BUILTIN


def test_tools_listing_shows_each_workers_tools_and_the_mismatches(seen: Fleet) -> None:
    view = _tools_view(seen)
    by_prefix = {n["node"].rsplit("-", 1)[0]: n for n in view["nodes"]}
    assert set(by_prefix) == {"agents", "tools-v1", "tools-v2"}, view["nodes"]
    assert by_prefix["agents"]["queues"] == ["agents"]
    assert by_prefix["tools-v2"]["tools"] == sorted([*EVERY_BUILTIN, "murmur", "shout"])
    assert view["mismatch"] is True
    tools = {t["name"]: t for t in view["tools"]}

    calculator = tools["calculator"]
    assert {n["node"].rsplit("-", 1)[0] for n in calculator["nodes"]} == set(by_prefix)
    assert calculator["queues"] == ["agents", "tools"]
    assert calculator["mismatches"] == []

    shout = tools["shout"]
    hashes = {n["node"].rsplit("-", 1)[0]: n["schema_hash"] for n in shout["nodes"]}
    assert set(hashes) == {"tools-v1", "tools-v2"}
    assert hashes["tools-v1"] == shout["schema_hash"] != hashes["tools-v2"]
    assert shout["on_api"] is True
    assert list(shout["parameters"]["properties"]) == ["text"]  # the API's own version
    assert any("no live worker of queue agents" in m for m in shout["mismatches"])
    assert any("schemas differ" in m for m in shout["mismatches"])

    murmur = tools["murmur"]  # only tools-v2 has it, the API does not
    assert murmur["on_api"] is False
    assert murmur["description"] == "Lower-case the text."
    assert list(murmur["parameters"]["properties"]) == ["text"]  # from the fleet
    assert any("tools-v1" in m and "lack" in m for m in murmur["mismatches"])
    assert any("the API" in m for m in murmur["mismatches"])

    record_sleep = tools["record_sleep"]  # the API's only
    assert record_sleep["nodes"] == []
    assert record_sleep["queues"] == []
    assert "! no live worker of queue agents has it" in seen.cli("tools").stdout


def test_a_node_record_is_refreshed_expires_and_goes_at_shutdown(seen: Fleet) -> None:
    stack, key_of = seen.stack, lambda node: node_key(seen.settings, node)
    extra = PoolSpec("agents", "threads", 2, name="extra")

    def extra_node() -> str:
        return next(n for n in _nodes(seen) if n.startswith("extra-"))

    stack.start_worker(extra, _with_modules(stack, "tests.tooling_v1"))
    wait_for(lambda: bool(extra_node()), 60, "the extra worker in the API's view")
    node = extra_node()
    first = json.loads(seen.redis.get(key_of(node)) or "{}")
    assert first["tools"]["shout"]
    # The agents of AGENTFLEET_AGENT_MODULES (tests.agents), by the digest of each definition.
    declared = (
        *(triage, echo, strict_json, cached_echo),
        *(researcher, rater, planner, recursive, billing, frontdesk),
    )
    assert first["agents"] == {a.name: a.digest for a in declared}
    assert 0 < int(seen.redis.pttl(key_of(node))) <= 3000  # 3 publish intervals
    wait_for(
        lambda: (
            json.loads(seen.redis.get(key_of(node)) or "{}")["published_at"] > first["published_at"]
        ),
        10,
        "the record to be published again",
    )
    proc = next(p for p in stack.procs if p.name.startswith("worker-extra"))
    stack.kill(proc, signal.SIGTERM)
    proc.popen.wait(timeout=60)
    assert seen.redis.exists(key_of(node)) == 0  # withdrawn at shutdown, not expired
    wait_for(lambda: node not in _nodes(seen), 10, "the API to drop the stopped worker")

    stack.start_worker(extra, _with_modules(stack, "tests.tooling_v1"))
    wait_for(lambda: bool(extra_node()), 60, "the second extra worker in the API's view")
    node = extra_node()
    proc = next(p for p in stack.procs if p.name.startswith("worker-extra") and p.alive())
    stack.kill(proc)  # SIGKILL: nothing withdraws the record; it expires
    proc.popen.wait(timeout=10)
    assert seen.redis.exists(key_of(node)) == 1
    wait_for(lambda: node not in _nodes(seen), 15, "the killed worker's record to expire")
