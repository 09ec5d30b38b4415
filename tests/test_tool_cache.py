"""``@tool(cache_ttl=...)``: a successful result is reused for the same tool, schema and
arguments within a tenant, without running the function again; and says so.

The tools (``cache_probe``, ``cache_probe_brief`` in ``tests.tooling``) count each execution
in Redis under their ``key`` argument, so a test sees from outside the worker whether the
function ran. ``key`` is one of the arguments, and so part of the cache entry: each test uses
keys of its own, and calls that should share an entry pass the same one.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from agentfleet.client import Client
from agentfleet.tasks import keys
from agentfleet.tasks.errors import ConfigError
from agentfleet.tasks.metrics import label_field
from agentfleet.tasks.models import DEFAULT_TENANT
from agentfleet.tasks.states import ToolOutcome
from agentfleet.tasks.store import CacheUse, get_store
from agentfleet.tasks.toolcall import cache_key
from agentfleet.tasks.tools import registry, tool
from agentfleet.tasks.tools._registry import _make_tool
from tests import tooling  # noqa: F401  (registers the probes here too, to name their keys)
from tests.conftest import Fleet
from tests.test_metrics import scrape

HIT = {"tool": "cache_probe", "result": "hit"}
MISS = {"tool": "cache_probe", "result": "miss"}
COUNTER = "agentfleet_tool_cache_total"


def _key() -> str:
    return f"cache-{uuid.uuid4().hex[:12]}"


def _call(client: Client, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Call ``name`` and wait for it; its stored result, as GET /v1/tool-calls/{id} shows."""
    accepted = client.create_tool_call(name, arguments)
    call = client.wait_tool_call(accepted.id, timeout=30)
    assert call.result is not None, call
    return call.result


def _entry(fleet: Fleet, name: str, arguments: dict[str, Any], tenant: str) -> str:
    """The cache key of ``name`` called with ``arguments`` by ``tenant``."""
    probe = registry.get(name)
    return cache_key(fleet.settings.redis.key_prefix, tenant, probe, probe.validate(arguments))


def _ran(fleet: Fleet, key: str) -> int:
    return fleet.counts("ran", [key])[0]


# --- the decorator ---------------------------------------------------------------------------
@pytest.mark.parametrize("ttl", [0, -1, -0.5, "60", True, math.nan, math.inf, [60]])
def test_a_cache_ttl_that_is_not_a_positive_number_is_refused_at_decoration(ttl: Any) -> None:
    def lookup(q: str) -> str:
        """Look something up."""
        return q

    with pytest.raises(ConfigError, match="'cache_ttl_refused': cache_ttl must be"):
        tool(name="cache_ttl_refused", cache_ttl=ttl)(lookup)
    assert "cache_ttl_refused" not in registry


def test_a_cache_ttl_may_be_an_int_or_a_float_and_is_none_by_default() -> None:
    def lookup(q: str) -> str:
        """Look something up."""
        return q

    assert _make_tool(lookup, None, None, None).cache_ttl is None
    assert _make_tool(lookup, None, None, None, 5).cache_ttl == 5.0
    assert _make_tool(lookup, None, None, None, 0.25).cache_ttl == 0.25


def test_equal_arguments_have_one_digest_whatever_their_order_or_defaults() -> None:
    probe = registry.get("cache_probe")

    def digest(arguments: str | dict[str, Any]) -> str:
        return probe.arguments_digest(probe.validate(arguments))

    same = digest({"key": "k", "a": 1, "b": 2})
    assert digest({"b": 2, "a": 1, "key": "k"}) == same
    assert digest('{"b": 2, "key": "k", "a": 1, "fail": false}') == same
    assert digest({"key": "k", "a": 2, "b": 1}) != same


def test_a_tool_whose_schema_changed_has_entries_of_its_own() -> None:
    def lookup(q: str) -> str:
        """Look something up."""
        return q

    def lookup_v2(q: str) -> str:
        """Look something up, better."""
        return q

    old = _make_tool(lookup, "lookup", None, None, 60)
    new = _make_tool(lookup_v2, "lookup", None, None, 60)
    assert old.schema_hash != new.schema_hash
    args = {"q": "x"}
    assert cache_key("af", "t", old, old.validate(args)) != cache_key(
        "af", "t", new, new.validate(args)
    )
    assert cache_key("af", "t", old, old.validate(args)) != cache_key(
        "af", "u", old, old.validate(args)
    )


# --- standalone calls ------------------------------------------------------------------------
def test_the_same_arguments_in_another_order_are_a_hit_and_do_not_run_again(
    fleet: Fleet,
) -> None:
    key = _key()
    before = scrape(fleet)
    first = _call(fleet.client, "cache_probe", {"key": key, "a": 1, "b": 2})
    assert first["ok"]
    assert first["output"] == {"a": 1, "b": 2, "ran": 1}
    assert "cached" not in first

    accepted = fleet.client.create_tool_call("cache_probe", {"b": 2, "key": key, "a": 1})
    second = fleet.client.wait_tool_call(accepted.id, timeout=30)
    assert second.status == "succeeded"
    assert second.result == {
        "id": accepted.id,
        "name": "cache_probe",
        "ok": True,
        "output": {"a": 1, "b": 2, "ran": 1},  # the first call's output
        "cached": True,
    }
    assert _ran(fleet, key) == 1, "the function ran again"

    after = scrape(fleet)
    assert after.get(COUNTER, **MISS) - before.get(COUNTER, **MISS) == 1
    assert after.get(COUNTER, **HIT) - before.get(COUNTER, **HIT) == 1
    # The entry lives for the tool's cache_ttl (300 s), in the caller's tenant.
    ttl_ms = fleet.redis.pttl(_entry(fleet, "cache_probe", {"key": key, "a": 1}, DEFAULT_TENANT))
    assert ttl_ms == -2, "arguments that differ have no entry"
    ttl_ms = fleet.redis.pttl(
        _entry(fleet, "cache_probe", {"key": key, "a": 1, "b": 2}, DEFAULT_TENANT)
    )
    assert 0 < ttl_ms <= 300_000


def test_different_arguments_miss(fleet: Fleet) -> None:
    key = _key()
    first = _call(fleet.client, "cache_probe", {"key": key, "a": 1})
    second = _call(fleet.client, "cache_probe", {"key": key, "a": 2})
    assert first["output"]["ran"] == 1
    assert second["output"]["ran"] == 2
    assert "cached" not in second
    assert _ran(fleet, key) == 2


def test_another_tenant_misses_and_then_hits_its_own_entry(fleet: Fleet) -> None:
    key = _key()
    arguments = {"key": key, "a": 7}
    mine = _call(fleet.client, "cache_probe", arguments)
    other = fleet.client_of(f"cache-tenant-{uuid.uuid4().hex[:8]}")
    try:
        theirs = _call(other, "cache_probe", arguments)
        again = _call(other, "cache_probe", arguments)
    finally:
        other.close()
    assert mine["output"]["ran"] == 1
    assert theirs["output"]["ran"] == 2
    assert "cached" not in theirs
    assert again["output"]["ran"] == 2
    assert again["cached"] is True
    assert _ran(fleet, key) == 2


def test_an_error_result_is_never_cached(fleet: Fleet) -> None:
    key = _key()
    arguments = {"key": key, "fail": True}
    before = scrape(fleet)
    first = _call(fleet.client, "cache_probe", arguments)
    second = _call(fleet.client, "cache_probe", arguments)
    for result, execution in ((first, 1), (second, 2)):
        assert result["ok"] is False
        assert "cached" not in result
        assert result["error"]["message"].endswith(f"failed on execution {execution}")
    assert _ran(fleet, key) == 2
    assert not fleet.redis.exists(_entry(fleet, "cache_probe", arguments, DEFAULT_TENANT))
    after = scrape(fleet)
    assert after.get(COUNTER, **MISS) - before.get(COUNTER, **MISS) == 2
    assert after.get(COUNTER, **HIT) == before.get(COUNTER, **HIT)


def test_after_its_ttl_the_tool_runs_again(fleet: Fleet, wait: Callable[..., None]) -> None:
    key = _key()
    arguments = {"key": key}
    entry = _entry(fleet, "cache_probe_brief", arguments, DEFAULT_TENANT)
    assert _call(fleet.client, "cache_probe_brief", arguments)["output"] == 1
    wait(lambda: not fleet.redis.exists(entry), 10, "the one-second entry to expire")
    again = _call(fleet.client, "cache_probe_brief", arguments)
    assert again["output"] == 2
    assert "cached" not in again
    assert _ran(fleet, key) == 2


# --- a run's calls ---------------------------------------------------------------------------
def _finished_calls(fleet: Fleet, run_id: str) -> list[dict[str, Any]]:
    """The data of the run's tool_call_finished events, once the run has ended."""
    run = fleet.client.wait(run_id, timeout=60)
    assert run.status == "succeeded", run
    return [e.data for e in fleet.client.events(run_id) if e.type == "tool_call_finished"]


def test_a_runs_call_is_a_hit_in_its_event_and_its_record(fleet: Fleet) -> None:
    key = _key()
    first = fleet.client.create_run(
        f'call cache_probe {{"key": "{key}", "a": 3}}', tools=["cache_probe"]
    )
    (ran,) = _finished_calls(fleet, first.id)
    assert ran["ok"] is True
    assert "cached" not in ran

    second = fleet.client.create_run(
        f'call cache_probe {{"a": 3, "key": "{key}"}}', tools=["cache_probe"]
    )
    (hit,) = _finished_calls(fleet, second.id)
    assert hit["ok"] is True
    assert hit["cached"] is True
    record = fleet.client.get_tool_call(hit["id"])
    assert record.run_id == second.id
    assert record.result is not None
    assert record.result["cached"] is True
    assert record.result["output"]["ran"] == 1
    # A standalone call of the run's tenant shares the run's entry.
    standalone = _call(fleet.client, "cache_probe", {"key": key, "a": 3})
    assert standalone["cached"] is True
    assert _ran(fleet, key) == 1


def test_invalid_arguments_are_an_error_neither_hit_nor_miss(fleet: Fleet) -> None:
    # The API refuses them in a standalone call; a model may still send them.
    before = scrape(fleet)
    prompt = f'call cache_probe {{"key": "{_key()}", "a": "not a number"}}'
    (failed,) = _finished_calls(fleet, fleet.client.create_run(prompt, tools=["cache_probe"]).id)
    assert failed["ok"] is False
    assert "cached" not in failed
    error = fleet.client.get_tool_call(failed["id"]).result
    assert error is not None
    assert error["error"]["code"] == "invalid_tool_arguments"
    after = scrape(fleet)
    for labels in (HIT, MISS):
        assert after.get(COUNTER, **labels) == before.get(COUNTER, **labels)


def test_a_run_of_another_tenant_misses(fleet: Fleet) -> None:
    key = _key()
    prompt = f'call cache_probe {{"key": "{key}"}}'
    (mine,) = _finished_calls(fleet, fleet.client.create_run(prompt, tools=["cache_probe"]).id)
    other = fleet.client_of(f"cache-run-tenant-{uuid.uuid4().hex[:8]}")
    try:
        run_id = other.create_run(prompt, tools=["cache_probe"]).id
        run = other.wait(run_id, timeout=60)
        assert run.status == "succeeded", run
        theirs = [e.data for e in other.events(run_id) if e.type == "tool_call_finished"]
    finally:
        other.close()
    assert "cached" not in mine
    assert "cached" not in theirs[0]
    assert _ran(fleet, key) == 2


# --- the store -------------------------------------------------------------------------------
def test_an_entry_is_kept_only_with_the_result_that_is_stored(fleet: Fleet) -> None:
    """The script storing a call's result keeps its entry: a result that loses to the one
    already stored (a duplicate delivery's) keeps none, and counts nothing."""
    store = get_store(fleet.settings)
    call_id, name = f"cache-store-{uuid.uuid4().hex[:12]}", "cache_probe"
    metric = keys.MetricKeys(fleet.settings.redis.key_prefix).tool_cache
    counted = label_field(name, "miss")
    before = int(fleet.redis.hget(metric, counted) or 0)
    claim = store.begin_tool(call_id, name, "{}", None, lease_s=5)
    assert claim.outcome == ToolOutcome.OK
    assert claim.tenant == ""  # sent without the API: its record names no tenant
    first = {"id": call_id, "name": name, "ok": True, "output": 1}
    entry = keys.tool_cache(fleet.settings.redis.key_prefix, "t", name, "h", f"{call_id}-1")
    use = CacheUse(entry, hit=False, ttl_ms=60_000, tool=name)
    stored, _ = store.complete_tool(call_id, claim.token, first, None, cache=use)
    assert stored == first
    assert json.loads(fleet.redis.get(entry) or "null") == first
    assert 0 < fleet.redis.pttl(entry) <= 60_000

    late = {"id": call_id, "name": name, "ok": True, "output": 2}
    other = keys.tool_cache(fleet.settings.redis.key_prefix, "t", name, "h", f"{call_id}-2")
    use = CacheUse(other, hit=False, ttl_ms=60_000, tool=name)
    stored, _ = store.complete_tool(call_id, "", late, None, cache=use)
    assert stored == first
    assert not fleet.redis.exists(other)
    assert int(fleet.redis.hget(metric, counted) or 0) == before + 1
