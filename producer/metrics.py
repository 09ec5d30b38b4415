"""``GET /metrics``: the whole fleet's numbers in Prometheus text format.

Everything is read from Redis at scrape time (what :mod:`agentfleet.tasks.metrics` recorded, the
broker's queues, the breakers), so every API replica serves the same fleet-wide values: scrape one,
or aggregate replicas with ``max``, never ``sum``. One scrape is two pipelined round trips (run
store and broker; one when they share a Redis).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, cast

import redis
from fastapi import APIRouter, Request, Response
from kombu.transport.redis import PRIORITY_STEPS, Channel
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agentfleet.tasks.agents import registry as agent_registry
from agentfleet.tasks.keys import MetricKeys
from agentfleet.tasks.llm import get_guard
from agentfleet.tasks.metrics import (
    CACHE_RESULTS,
    DENIAL_REASONS,
    FINISHED_STATUSES,
    RUN_BUCKETS,
    STEP_BUCKETS,
    TOKEN_KINDS,
    format_bound,
)
from agentfleet.tasks.redisconn import get_redis
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.tools import registry as tool_registry
from agentfleet.workers import queues
from agentfleet.workers.conf import transport_options

#: The classic text format, which every Prometheus version reads (newer prometheus_client
#: releases default to 1.0.0, which older servers do not know). Our names are plain ASCII,
#: so the body is the same in both.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: pybreaker's stored state -> the gauge value (alert on ``== 2``).
BREAKER_STATES: Final = {"closed": 0, "half-open": 1, "open": 2}
#: kombu's Redis transport keeps delivered, not yet acknowledged messages (running,
#: prefetched, or held for a countdown/ETA) in this hash, for every queue together.
UNACKED_KEY: Final = "unacked"
#: Broker URL schemes whose queues are Redis lists we can count.
REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")


def queue_keys(queue: str, transport: Mapping[str, Any]) -> list[str]:
    """The Redis lists of ``queue``: kombu keeps one per priority step (``q``, ``q\\x06\\x163``...).

    Messages published without a priority all go to the first, but a ``send_task`` caller may
    set one, so every step is counted.
    """
    prefix = str(transport.get("global_keyprefix", ""))
    steps = transport.get("priority_steps", PRIORITY_STEPS)
    return [f"{prefix}{queue}"] + [f"{prefix}{queue}{Channel.sep}{p}" for p in steps if p]


def _histogram(
    name: str, documentation: str, raw: Mapping[str, str], bounds: Sequence[float]
) -> HistogramMetricFamily:
    # Fields hold per-bucket counts; Prometheus wants cumulative ones. Bounds found in Redis
    # but not configured (a different version wrote them) are kept, so nothing is dropped.
    per_bucket = {float(k): int(v) for k, v in raw.items() if k != "sum"}
    edges = sorted({*map(float, bounds), *per_bucket, float("inf")})
    running, buckets = 0, []
    for edge in edges:
        running += per_bucket.get(edge, 0)
        buckets.append((format_bound(edge), float(running)))
    return HistogramMetricFamily(
        name, documentation, buckets=buckets, sum_value=float(raw.get("sum") or 0)
    )


def _labelled(raw: Mapping[str, str]) -> Iterator[tuple[list[str], int]]:
    for field, value in raw.items():
        yield [str(label) for label in json.loads(field)], int(value)


#: Token kinds of the per-agent usage (``cached``: the part of ``prompt`` the provider's cache
#: served).
AGENT_TOKEN_KINDS: Final = ("prompt", "completion", "cached")


def _agents(runs: Mapping[str, str], usage: Mapping[str, str]) -> Iterator[Metric]:
    """Runs by final status, tokens and cost per agent. Agents are the registered names (a run
    names one the intake knows, or none: ``""``), so the series are few."""
    # Every agent the API has and the runs of none, zeros included, so rate() works from the
    # start; agents only workers have show once counted.
    names = ["", *(a.name for a in agent_registry.all())]
    finished = CounterMetricFamily(
        "agentfleet_agent_runs_finished",
        'Runs that reached a final status, per agent ("" for runs of no agent) and status.',
        labels=["agent", "status"],
    )
    counts = {(a, s): 0 for a in names for s in FINISHED_STATUSES}
    for (agent, status), value in _labelled(runs):
        counts[(agent, status)] = value
    for labels, value in sorted(counts.items()):
        finished.add_metric(list(labels), value)
    yield finished
    tokens = CounterMetricFamily(
        "agentfleet_agent_tokens",
        'Tokens of the LLM calls of each agent\'s runs ("" for runs of no agent), per kind '
        "(prompt, completion, cached: the prompt tokens the provider served from its cache).",
        labels=["agent", "kind"],
    )
    cost = CounterMetricFamily(
        "agentfleet_agent_cost_usd",
        'US dollars of the LLM calls of each agent\'s runs ("" for runs of no agent) at the '
        "providers' configured prices.",
        labels=["agent"],
    )
    amounts: dict[tuple[str, str], float] = {
        (a, k): 0 for a in names for k in (*AGENT_TOKEN_KINDS, "cost")
    }
    for field, counted in usage.items():
        who, kind = (str(label) for label in json.loads(field))
        amounts[(who, kind)] = float(counted)
    for (who, kind), amount in sorted(amounts.items()):
        if kind == "cost":
            cost.add_metric([who], amount)
        else:
            tokens.add_metric([who, kind], amount)
    yield tokens
    yield cost


def _llm_cache(raw: Mapping[str, str]) -> CounterMetricFamily:
    counter = CounterMetricFamily(
        "agentfleet_llm_cache",
        "LLM answers of runs with a cache_ttl, per provider and model, by where they came "
        "from: the cache (hit), an identical call in flight (shared), or a provider (miss).",
        labels=["provider", "model", "result"],
    )
    for labels, value in _labelled(raw):
        counter.add_metric(labels, value)
    return counter


def _tool_cache(raw: Mapping[str, str]) -> CounterMetricFamily:
    counter = CounterMetricFamily(
        "agentfleet_tool_cache",
        "Calls of a tool with cache_ttl, per tool, by whether its cache had the result (hit) "
        "or not (miss); a call whose arguments were invalid is neither.",
        labels=["tool", "result"],
    )
    # Every cached tool the API has, zeros included, so rate() works from the start; tools
    # only workers have show once counted.
    counts = {(t.name, r): 0 for t in tool_registry.all() if t.cache_ttl for r in CACHE_RESULTS}
    for (tool, result), value in _labelled(raw):
        counts[(tool, result)] = value
    for labels, value in sorted(counts.items()):
        counter.add_metric(list(labels), value)
    return counter


class FleetCollector(Collector):
    """Reads the fleet's metrics from Redis on every scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = MetricKeys(settings.redis.key_prefix)
        self.transport = transport_options(settings)

    def _broker(self) -> redis.Redis | None:
        url = self.settings.broker
        if not url.startswith(REDIS_SCHEMES):
            return None
        if url == self.settings.redis.redis_url:
            return get_redis(self.settings)
        return get_redis(self.settings.model_copy(update={"redis_url": url}))

    def collect(self) -> Iterator[Metric]:
        yield from self._runs_and_providers()
        yield from self._queues()

    def _runs_and_providers(self) -> Iterator[Metric]:
        k = self.keys
        providers = self.settings.llm.provider_list
        pipe = get_redis(self.settings).pipeline(transaction=False)
        for key in (k.runs, k.run_seconds, k.step_seconds, k.llm, k.admission_denials, k.spend):
            pipe.hgetall(key)
        pipe.hgetall(k.tool_cache)
        pipe.hgetall(k.llm_cache)
        pipe.hgetall(k.agent_runs)
        pipe.hgetall(k.agent_usage)
        pipe.zcard(k.active_runs)
        for provider in providers:
            guard = get_guard(self.settings, provider)
            pipe.mget([guard.keys["state"], guard.keys["fail_counter"]])
        runs, run_s, step_s, llm, denials, spent, tool_cache, llm_cache, *rest = pipe.execute()
        agent_runs, agent_usage, active, *breakers = rest

        yield CounterMetricFamily(
            "agentfleet_runs_enqueued",
            "Runs accepted (a run record created, through the API or send_task).",
            value=int(runs.get("enqueued", 0)),
        )
        finished = CounterMetricFamily(
            "agentfleet_runs_finished", "Runs that reached a final status.", labels=["status"]
        )
        for status in FINISHED_STATUSES:
            finished.add_metric([status], int(runs.get(status, 0)))
        yield finished
        yield GaugeMetricFamily(
            "agentfleet_runs_in_flight",
            "Runs accepted and not finished (the watchdog's set of active runs).",
            value=int(active),
        )
        yield _histogram(
            "agentfleet_run_duration_seconds",
            "Seconds from a run's creation to its final status (queueing included).",
            run_s,
            RUN_BUCKETS,
        )
        yield _histogram(
            "agentfleet_step_duration_seconds",
            "Seconds from a step claiming its run to its LLM answer being stored.",
            step_s,
            STEP_BUCKETS,
        )
        yield from self._llm(llm)
        yield from self._spend(spent)
        yield from self._providers(providers, breakers, denials)
        yield _tool_cache(tool_cache)
        yield _llm_cache(llm_cache)
        yield from _agents(agent_runs, agent_usage)

    def _llm(self, raw: Mapping[str, str]) -> Iterator[Metric]:
        tokens = CounterMetricFamily(
            "agentfleet_llm_tokens",
            "Tokens the providers reported, per provider, model and kind (prompt, completion).",
            labels=["provider", "model", "kind"],
        )
        calls = CounterMetricFamily(
            "agentfleet_llm_calls",
            "LLM calls whose answer a step stored, per provider and model.",
            labels=["provider", "model"],
        )
        for (provider, model, kind), value in _labelled(raw):
            if kind in TOKEN_KINDS:
                tokens.add_metric([provider, model, kind], value)
            elif kind == "calls":
                calls.add_metric([provider, model], value)
        yield tokens
        yield calls

    def _spend(self, raw: Mapping[str, str]) -> Iterator[Metric]:
        tokens = CounterMetricFamily(
            "agentfleet_tenant_tokens",
            "Tokens of every LLM call, per tenant, model and kind (prompt, completion, cached: "
            "the prompt tokens the provider served from its cache).",
            labels=["tenant", "model", "kind"],
        )
        calls = CounterMetricFamily(
            "agentfleet_tenant_llm_calls",
            "LLM calls, per tenant and model.",
            labels=["tenant", "model"],
        )
        cost = CounterMetricFamily(
            "agentfleet_tenant_cost_usd",
            "US dollars of every LLM call at the providers' configured prices, per tenant and "
            "model.",
            labels=["tenant", "model"],
        )
        for field, value in raw.items():
            tenant, model, kind = (str(label) for label in json.loads(field))
            if kind == "cost":
                cost.add_metric([tenant, model], float(value))
            elif kind == "calls":
                calls.add_metric([tenant, model], int(value))
            else:
                tokens.add_metric([tenant, model, kind], int(value))
        yield tokens
        yield calls
        yield cost

    def _providers(
        self, providers: Sequence[Any], breakers: Sequence[Any], denials: Mapping[str, str]
    ) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "agentfleet_provider_breaker_state",
            "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.",
            labels=["provider"],
        )
        failures = GaugeMetricFamily(
            "agentfleet_provider_consecutive_failures",
            "Provider-side failures counted by the breaker since it last closed.",
            labels=["provider"],
        )
        for provider, (stored, fails) in zip(providers, breakers, strict=True):
            state.add_metric([provider.name], BREAKER_STATES.get(stored or "closed", 0))
            failures.add_metric([provider.name], int(fails or 0))
        yield state
        yield failures
        refused = CounterMetricFamily(
            "agentfleet_provider_admission_denials",
            "Calls a provider's guard refused, per reason: breaker_open, breaker_half_open "
            "(probes all out), retry_after (held by a Retry-After), rpm, tpm (rate limits).",
            labels=["provider", "reason"],
        )
        # Every configured provider and reason, zeros included, so rate() works from the start.
        counts = {(p.name, r): 0 for p in providers for r in DENIAL_REASONS}
        for (provider, reason), value in _labelled(denials):
            counts[(provider, reason)] = value
        for (provider, reason), value in sorted(counts.items()):
            refused.add_metric([provider, reason], value)
        yield refused

    def _queues(self) -> Iterator[Metric]:
        broker = self._broker()
        if broker is None:
            return
        pipe = broker.pipeline(transaction=False)
        for queue in queues.ALL:
            for key in queue_keys(queue, self.transport):
                pipe.llen(key)
        prefix = str(self.transport.get("global_keyprefix", ""))
        pipe.hlen(f"{prefix}{UNACKED_KEY}")
        *lengths, unacked = pipe.execute()
        depth = GaugeMetricFamily(
            "agentfleet_queue_messages",
            "Messages waiting in a broker queue (every priority level).",
            labels=["queue"],
        )
        per_queue = len(lengths) // len(queues.ALL)
        for index, queue in enumerate(queues.ALL):
            depth.add_metric([queue], sum(lengths[index * per_queue : (index + 1) * per_queue]))
        yield depth
        yield GaugeMetricFamily(
            "agentfleet_broker_unacked_messages",
            "Messages delivered to workers and not yet acknowledged, all queues: running, "
            "prefetched, or held until a retry countdown or ETA.",
            value=int(unacked),
        )


_registries: dict[tuple[int, int], CollectorRegistry] = {}


def registry_for(settings: Settings) -> CollectorRegistry:
    """The process's registry for ``settings``: the fleet collector and nothing else."""
    key = (os.getpid(), id(settings))
    registry = _registries.get(key)
    if registry is None:
        # auto_describe off: registering must not read Redis.
        registry = _registries[key] = CollectorRegistry(auto_describe=False)
        registry.register(FleetCollector(settings))
    return registry


router = APIRouter()


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}, 503: {}},
)
def metrics(request: Request) -> Response:
    """Fleet-wide metrics in Prometheus text format (503 when Redis does not answer)."""
    settings = cast(Settings, request.app.state.settings)
    return Response(generate_latest(registry_for(settings)), media_type=CONTENT_TYPE)
