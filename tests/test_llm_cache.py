"""The LLM response cache: a run with a cache_ttl (or an agent with one) reuses the answer to
exactly the same call within its tenant, makes one provider call for identical calls in
flight, and counts hits as costing nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from agentfleet.client import Client
from agentfleet.tasks import keys
from agentfleet.tasks.agents import Agent
from agentfleet.tasks.errors import ConfigError
from tests.conftest import Fleet


def _tag() -> str:
    return f"cache-{uuid.uuid4().hex[:10]}"


def _cache_metric(fleet: Fleet, result: str) -> int:
    labels = {"provider": "default", "model": "sim-1", "result": result}
    return int(fleet.metric("agentfleet_llm_cache_total", **labels) or 0)


@pytest.fixture
def other_tenant(fleet: Fleet) -> Iterator[Client]:
    with fleet.client_of("cache-other") as client:
        yield client


def test_the_same_call_again_is_answered_from_the_cache(fleet: Fleet) -> None:
    tag = _tag()
    prompt = f"[[tag:{tag}]] what is cached?"
    hits_before = _cache_metric(fleet, "hit")
    first = fleet.client.run(prompt, tools=[], cache_ttl=60, timeout=60)
    second = fleet.client.run(prompt, tools=[], cache_ttl=60, timeout=60)
    assert fleet.tagged(tag) == 1  # the second run made no provider call
    assert second.result == first.result
    assert (first.usage.cache_hits, second.usage.cache_hits) == (0, 1)
    assert second.usage.total_tokens == 0
    assert second.usage.cost == 0
    assert first.usage.total_tokens > 0
    finished = [e.data for e in fleet.client.events(second.id) if e.type == "llm_call_finished"]
    assert [e["cache_hits"] for e in finished] == [1]
    assert _cache_metric(fleet, "hit") == hits_before + 1


def test_anything_that_reaches_the_provider_changes_the_key(
    fleet: Fleet, other_tenant: Client
) -> None:
    tag = _tag()
    prompt = f"[[tag:{tag}]] key parts"
    fleet.client.run(prompt, tools=[], cache_ttl=60, timeout=60)
    fleet.client.run(prompt, tools=[], cache_ttl=60, model_settings={"temperature": 0.5})
    fleet.client.run(prompt, tools=["calculator"], cache_ttl=60, timeout=60)
    fleet.client.run(prompt, tools=[], system="Be brief.", cache_ttl=60, timeout=60)
    assert fleet.tagged(tag) == 4
    # Another tenant never sees this tenant's answers.
    other_tenant.run(prompt, tools=[], cache_ttl=60, timeout=60)
    assert fleet.tagged(tag) == 5
    # A run without a cache_ttl neither reads nor waits for the cache.
    fleet.client.run(prompt, tools=[], timeout=60)
    assert fleet.tagged(tag) == 6


def test_identical_concurrent_calls_make_one_provider_call(fleet: Fleet) -> None:
    tag = _tag()
    prompt = f"[[tag:{tag}]] [[latency:1]] all at once"

    def post(_: int) -> str:
        return fleet.client.create_run(prompt, tools=[], cache_ttl=60).id

    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(post, range(20)))
    runs = [fleet.client.wait(run_id, timeout=90) for run_id in ids]
    assert {r.status for r in runs} == {"succeeded"}
    assert len({r.result for r in runs}) == 1
    assert fleet.tagged(tag) == 1
    assert sum(r.usage.cache_hits for r in runs) == 19


def test_an_entry_expires_after_its_ttl(fleet: Fleet, wait: Callable[..., None]) -> None:
    tag = _tag()
    prompt = f"[[tag:{tag}]] short-lived"
    pattern = f"{keys.llm_cache(fleet.settings.redis.key_prefix, 'default', '')}*"

    def entries() -> set[str]:
        return set(fleet.redis.scan_iter(match=pattern, count=1000))

    before = entries()
    fleet.client.run(prompt, tools=[], cache_ttl=1, timeout=60)
    new = entries() - before
    assert len(new) == 1
    wait(lambda: not (new & entries()), 10, "the cache entry to expire")
    fleet.client.run(prompt, tools=[], cache_ttl=1, timeout=60)
    assert fleet.tagged(tag) == 2


def test_an_agent_with_a_cache_ttl_reuses_answers(fleet: Fleet) -> None:
    tag = _tag()
    prompt = f"[[tag:{tag}]] agent cache"
    first = fleet.client.run(prompt, agent="cached_echo", timeout=60)
    second = fleet.client.run(prompt, agent="cached_echo", timeout=60)
    assert fleet.tagged(tag) == 1
    assert second.usage.cache_hits == 1
    assert second.result == first.result
    listed = next(a for a in fleet.client.agents() if a.name == "cached_echo")
    assert listed.cache_ttl == 60
    # The agent does not let a run change its cache policy.
    reply = fleet.http.post("/v1/runs", json={"agent": "cached_echo", "input": "x", "cache_ttl": 5})
    assert reply.status_code == 422
    assert "cache_ttl" in reply.text


@pytest.mark.parametrize("value", [0, -1, 0.5, 31 * 86_400, "soon"])
def test_a_cache_ttl_that_cannot_be_is_a_422(fleet: Fleet, value: object) -> None:
    before = fleet.run_keys()
    reply = fleet.http.post("/v1/runs", json={"input": "hi", "cache_ttl": value})
    assert reply.status_code == 422, reply.text
    assert "cache_ttl" in reply.text
    assert fleet.run_keys() == before


def test_an_agent_cache_ttl_is_checked_when_declared() -> None:
    with pytest.raises(ConfigError, match="cache_ttl"):
        Agent(name="bad_cache", instructions="x", cache_ttl=0, register=False)
