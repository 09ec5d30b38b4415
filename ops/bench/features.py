"""Section (g), features: what a one-step run costs with a feature on, next to an ad-hoc run.

Variants (:data:`VARIANTS`) of the same one-step run, each through ``POST /v1/runs`` and then
``AsyncResult(run_id).get()``, one at a time, on the zero-latency simulator: by agent name, by
a typed agent's name (an output schema), on a thread with history, answered from the response
cache, and with a run budget and a tenant's daily budget. In each round every variant makes
``features_n`` runs under a CPU meter, in an order that rotates from round to round; each
figure is the median over rounds of its ratio to the ad-hoc run of the same round, since the
machine's noise moves both alike.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from agentfleet.producer.auth import create_key
from agentfleet.tasks.models import DEFAULT_TENANT
from ops.bench import agents
from ops.bench._common import FLEET_AGENTS_POOL, ONE_STEP_PROMPT, AgentsPool, fmt, ratio, table
from ops.bench._stack import Bench, Fleet, start_api
from ops.stack import Proc, StackError

FEATURE_AGENTS = AgentsPool(FLEET_AGENTS_POOL, 100)
#: The process groups whose CPU a run is charged: the simulator stands for a provider.
FLEET_GROUPS = ("agents", "tools", "api", "redis")
#: The groups each table row shows: the fleet's and the simulator's.
GROUPS = (*FLEET_GROUPS, "sim")
#: The tenant of the budgeted runs: the only one with a daily budget, big enough never to refuse.
BUDGET_TENANT = "bench-budgeted"
#: The thread variant rotates over this many threads, each holding :data:`THREAD_TURNS` turns:
#: the history keeps that many, so every measured run starts with the same history.
THREADS = 8
THREAD_TURNS = 4
#: The settings of the section's API and workers.
FEATURE_ENV = {
    "AGENTFLEET_AGENT_MODULES": "ops.bench.agents",
    "AGENTFLEET_LLM_PRICES": json.dumps({"sim-1": {"input": 0.15, "output": 0.6}}),
    "AGENTFLEET_TENANT_BUDGETS": json.dumps(
        {BUDGET_TENANT: {"tokens_per_day": 10**11, "cost_per_day": 10**6}}
    ),
    "AGENTFLEET_THREAD_MAX_TURNS": str(THREAD_TURNS),
}

#: What a finished run's view must show for the variant to have been measured.
Check = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class Variant:
    """One kind of one-step run: the request's fields besides its input, and its tenant."""

    name: str
    fields: dict[str, Any]
    check: Check = lambda view: True
    tenant: str = DEFAULT_TENANT
    on_threads: bool = False

    def body(self, index: int) -> dict[str, Any]:
        """The request of the variant's ``index``-th run."""
        thread = {"thread_id": f"bench-{index % THREADS}"} if self.on_threads else {}
        return {"input": ONE_STEP_PROMPT, **self.fields, **thread}


#: The baseline first: today's ad-hoc one-step run.
VARIANTS = (
    Variant("ad hoc", {}),
    Variant("agent by name", {"agent": agents.PLAIN}),
    Variant("typed agent", {"agent": agents.TYPED}, lambda v: isinstance(v["result"], dict)),
    Variant(f"thread ({THREAD_TURNS} turns)", {}, lambda v: bool(v["thread_id"]), on_threads=True),
    Variant("cache hit", {"cache_ttl": 3600}, lambda v: v["usage"]["cache_hits"] == 1),
    Variant(
        "budgeted",
        {"max_total_tokens": 100_000},
        lambda v: v["usage"]["cost"] > 0,
        tenant=BUDGET_TENANT,
    ),
)


@dataclass
class FeatureResult:
    """Section (g): one variant over every round."""

    config: str
    runs: int
    rounds: int = 0
    #: Per round: CPU ms per run of :data:`FLEET_GROUPS`, and the p50 round trip in ms.
    fleet_cpu_ms: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    #: Per round: CPU ms per run of each process group.
    group_cpu_ms: list[dict[str, float]] = field(default_factory=list)
    #: Medians over rounds of the ratio to the ad-hoc run of the same round.
    cpu_ratio: float = math.nan
    p50_ratio: float = math.nan
    errors: int = 0
    problem: str = ""


def measure(bench: Bench) -> list[FeatureResult]:
    """Section (g): every variant, ``features_rounds`` rounds of ``features_n`` runs."""
    results = [FeatureResult(v.name, bench.sizes.features_n) for v in VARIANTS]
    fleet = Fleet.connect(bench.fresh_db())
    url = fleet.settings.redis.redis_url
    procs: list[Proc] = []
    clients: dict[str, httpx.Client] = {}
    try:
        with bench.workers(procs):
            workers = bench.start_agents(url, FEATURE_AGENTS, FEATURE_ENV)
            tools = bench.start_tools(url, FEATURE_ENV)
            procs.extend([*workers, tools])
            bench.stack.wait_workers(fleet.app, FEATURE_AGENTS.processes + 1)
            api, base_url = start_api(bench, url, 1, FEATURE_ENV)
            procs.append(api)
            for tenant in {v.tenant for v in VARIANTS}:
                key = create_key(fleet.store.redis, fleet.settings, tenant)
                headers = {"Authorization": f"Bearer {key}"}
                clients[tenant] = httpx.Client(base_url=base_url, timeout=30, headers=headers)
            runner = Runner(fleet, clients)
            _warm_up(runner, procs)
            groups: dict[str, Sequence[Proc]] = {"agents": workers, "tools": [tools], "api": [api]}
            for round_ in range(bench.sizes.features_rounds):
                _round(bench, runner, results, round_, groups)
            _check_setup(runner)
    except (StackError, OSError, redis.RedisError, httpx.HTTPError) as exc:
        results[0].problem = f"{type(exc).__name__}: {exc}\n{bench.log_tails(procs)}"
    finally:
        for client in clients.values():
            client.close()
        fleet.close()
    _summarize(results)
    return results


class Runner:
    """Makes one run of a variant over HTTP and waits for its result."""

    def __init__(self, fleet: Fleet, clients: dict[str, httpx.Client]) -> None:
        self.fleet, self.clients = fleet, clients

    def run(self, variant: Variant, index: int, check: bool = True) -> float:
        """The round trip in ms; :class:`StackError` if the run was refused or not as expected."""
        start = time.perf_counter()
        response = self.clients[variant.tenant].post("/v1/runs", json=variant.body(index))
        if response.status_code != 202:
            raise StackError(f"POST /v1/runs answered {response.status_code}: {response.text}")
        run_id = response.json()["id"]
        view = self.fleet.app.AsyncResult(run_id).get(timeout=10)
        took = (time.perf_counter() - start) * 1000
        if check and not (view["status"] == "succeeded" and variant.check(view)):
            raise StackError(f"{variant.name}: run {run_id} is not what it must be: {view}")
        return took


def _warm_up(runner: Runner, procs: Sequence[Proc]) -> None:
    """Connections and first-call caches; the response cache's entry; every thread's history.

    The API takes a moment to see the agents the workers publish, so the first run by name is
    tried until it is accepted.
    """
    deadline = time.monotonic() + 60
    while True:
        try:
            runner.run(VARIANTS[1], 0)
            break
        except StackError:
            if time.monotonic() > deadline or not all(p.alive() for p in procs):
                raise
            time.sleep(0.2)
    for variant in VARIANTS:
        for index in range(THREADS * THREAD_TURNS):
            runner.run(variant, index, check=False)
    _check_setup(runner)


def _check_setup(runner: Runner) -> None:
    """:class:`StackError` unless the budgeted tenant has a budget and the threads hold exactly
    :data:`THREAD_TURNS` turns (checked again after the rounds: the history stayed that long)."""
    usage = runner.clients[BUDGET_TENANT].get("/v1/usage").json()
    if not usage.get("budget"):
        raise StackError(f"tenant {BUDGET_TENANT} has no budget: {usage}")
    for thread in range(THREADS):
        history = runner.clients[DEFAULT_TENANT].get(f"/v1/threads/bench-{thread}").json()
        if history.get("turns") != THREAD_TURNS:
            turns = history.get("turns")
            raise StackError(f"thread bench-{thread} holds {turns} turns, not {THREAD_TURNS}")


def _round(
    bench: Bench,
    runner: Runner,
    results: list[FeatureResult],
    round_: int,
    groups: dict[str, Sequence[Proc]],
) -> None:
    """One round: each variant's runs in turn, starting one later than the round before."""
    order = [(round_ + i) % len(VARIANTS) for i in range(len(VARIANTS))]
    watched = [p for group in groups.values() for p in group]
    for which in order:
        variant, result = VARIANTS[which], results[which]
        if dead := [p.name for p in watched if not p.alive()]:
            raise StackError(f"{', '.join(dead)} exited")
        meter = bench.meter(groups)
        took: list[float] = []
        meter.start()
        for index in range(result.runs):
            try:
                took.append(runner.run(variant, index))
            except Exception as exc:  # a timeout or a run not as expected: count it, go on
                result.errors += 1
                result.problem = f"last error: {type(exc).__name__}: {exc}"
        cpu = meter.stop()
        result.rounds += 1
        result.fleet_cpu_ms.append(sum(cpu[g] for g in FLEET_GROUPS) * 1000 / result.runs)
        result.p50_ms.append(statistics.median(took) if took else math.nan)
        result.group_cpu_ms.append({name: cpu[name] * 1000 / result.runs for name in GROUPS})


def _summarize(results: list[FeatureResult]) -> None:
    """Medians over rounds, and each round's ratios to the ad-hoc run of the same round."""
    base = results[0]
    for result in results:
        rounds = range(min(result.rounds, base.rounds))
        cpu = [ratio(result.fleet_cpu_ms[r], base.fleet_cpu_ms[r]) for r in rounds]
        p50 = [ratio(result.p50_ms[r], base.p50_ms[r]) for r in rounds]
        result.cpu_ratio = _median(cpu)
        result.p50_ratio = _median(p50)


def _median(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def report(results: Sequence[FeatureResult]) -> str:
    """Section (g) as text."""
    rows = [
        [
            r.config,
            f"{r.runs}x{r.rounds}",
            _median(r.fleet_cpu_ms),
            fmt(r.cpu_ratio, 2),
            *(_median([g[name] for g in r.group_cpu_ms]) for name in GROUPS),
            _median(r.p50_ms),
            fmt(r.p50_ratio, 2),
            r.errors,
        ]
        for r in results
    ]
    headers = [
        "variant", "runs", "cpu ms/run", "cpu vs ad hoc", "agents", "tools", "api", "redis",
        "sim", "p50 ms", "p50 vs ad hoc", "errors",
    ]  # fmt: skip
    return table(
        "(g) features: one-step runs through POST /v1/runs + AsyncResult.get, one at a time, "
        f"zero-latency simulator,\n    agents {FEATURE_AGENTS.label}, tools prefork, API uvicorn "
        "x1; rounds of each variant in turn, medians over rounds\n    cpu ms/run = agents + "
        "tools + API + Redis (the simulator apart); vs ad hoc = median over rounds\n    of the "
        f"ratio to the ad-hoc run of the same round; thread: {THREADS} threads in turn, "
        f"{THREAD_TURNS} turns of history each;\n    budgeted: max_total_tokens and tenant "
        f"{BUDGET_TENANT}'s daily budget",
        headers,
        rows,
    )
