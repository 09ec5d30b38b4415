"""Section (a), latency: sequential round trips, plain Celery against one-step runs."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from ops import bench_plain
from ops.bench._common import (
    FLEET_AGENTS_POOL,
    ONE_STEP_PROMPT,
    TOOLS_POOL,
    WARM_TWO_STEP_PROMPT,
    AgentsPool,
    fmt,
    percentile,
    ratio,
    table,
    verdict,
)
from ops.bench._stack import Bench, Fleet, plain_producer
from ops.stack import Proc, StackError

#: The target: a run's p50 round trip at most this many times plain Celery's.
TARGET_LATENCY_RATIO = 2.0

#: Section (a): the pool the fleet would use for LLM steps, per pool family.
LATENCY_POOLS = {
    "gevent": AgentsPool("gevent", 100),
    "threads": AgentsPool("threads", 100),
    "prefork": AgentsPool("prefork", 2),
}


@dataclass
class LatencyResult:
    """Section (a): sequential round trips, milliseconds."""

    config: str
    n: int
    plain_p50_ms: float = math.nan
    plain_p99_ms: float = math.nan
    run_p50_ms: float = math.nan
    run_p99_ms: float = math.nan
    #: p50 of the parts of a run's round trip, from the timestamps in its record.
    run_queue_p50_ms: float = math.nan
    run_step_p50_ms: float = math.nan
    run_result_p50_ms: float = math.nan
    errors: int = 0
    problem: str = ""


def measure(bench: Bench) -> list[LatencyResult]:
    """Section (a): plain ``apply_async().get()`` against a one-step run, N sequential.

    One plain worker serves as the baseline for every ``agents`` pool measured.
    """
    url = bench.fresh_db()
    app = plain_producer(url)
    results: list[LatencyResult] = []
    try:
        with bench.workers([bench.start_plain(url)]) as plain:
            bench.stack.wait_workers(app, 1)
            noop = bench_plain.noop_task(app)
            for _ in range(20):  # the pool children, the connections
                noop.apply_async().get(timeout=30)
            for family, agents in LATENCY_POOLS.items():
                if family in bench.families:
                    results.append(_latency_one(bench, agents, noop, plain))
    except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
        failed = LatencyResult("plain Celery", bench.sizes.latency_n)
        failed.problem = f"{type(exc).__name__}: {exc}"
        results.append(failed)
    finally:
        app.close()
    return results


def _latency_one(bench: Bench, agents: AgentsPool, noop: Any, plain: list[Proc]) -> LatencyResult:
    result = LatencyResult(agents.label, bench.sizes.latency_n)
    fleet = Fleet.connect(bench.fresh_db())
    url = fleet.settings.redis.redis_url
    procs: list[Proc] = []
    try:
        with bench.workers(procs):
            procs.extend([*bench.start_agents(url, agents), bench.start_tools(url)])
            bench.stack.wait_workers(fleet.app, agents.processes + 1)
            # Warm up: pool children, HTTP and Redis connections, the tools children.
            bench.wait_runs(fleet, ONE_STEP_PROMPT, 20, procs, timeout=60)
            bench.wait_runs(fleet, WARM_TWO_STEP_PROMPT, 4, procs, timeout=60)
            _measure_latency(bench, result, noop, fleet, [*procs, *plain])
    except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
        result.problem = f"{type(exc).__name__}: {exc}\n{bench.log_tails(procs)}"
    finally:
        fleet.close()
    return result


def _measure_latency(
    bench: Bench, result: LatencyResult, noop: Any, fleet: Fleet, procs: Sequence[Proc]
) -> None:
    plain_ms: list[float] = []
    run_ms: list[float] = []
    run_ids: list[str] = []
    deadline = time.monotonic() + 60 + result.n * 0.2
    # Alternate the two so that both see the same noise from the rest of the machine.
    for _ in range(result.n):
        if time.monotonic() > deadline:
            result.problem = f"timed out after {len(run_ms)} of {result.n} round trips"
            break
        if dead := [p.name for p in procs if not p.alive()]:
            result.problem = f"{', '.join(dead)} exited\n{bench.log_tails(procs)}"
            break
        try:
            start = time.perf_counter()
            noop.apply_async().get(timeout=10)
            plain_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            run_id = fleet.submit(ONE_STEP_PROMPT)
            fleet.app.AsyncResult(run_id).get(timeout=10)
            run_ms.append((time.perf_counter() - start) * 1000)
            run_ids.append(run_id)
        except Exception as exc:  # a timeout or a failed task: count it, go on
            result.errors += 1
            result.problem = f"last error: {type(exc).__name__}: {exc}"
    result.plain_p50_ms = percentile(plain_ms, 50)
    result.plain_p99_ms = percentile(plain_ms, 99)
    result.run_p50_ms, result.run_p99_ms = percentile(run_ms, 50), percentile(run_ms, 99)
    _latency_parts(result, fleet, run_ids, run_ms)


def _latency_parts(
    result: LatencyResult, fleet: Fleet, run_ids: Sequence[str], run_ms: Sequence[float]
) -> None:
    # Where a run's round trip goes, from the worker's own timestamps: queued until the
    # step starts, the step itself (LLM call included), then until the caller has it.
    queue, step, back = [], [], []
    for run_id, total in zip(run_ids, run_ms, strict=True):
        record = fleet.store.get_run(run_id)
        if record is None or record.started_at is None or record.finished_at is None:
            continue
        created, started = record.created_at, record.started_at
        finished = record.finished_at
        queue.append((started - created) * 1000)
        step.append((finished - started) * 1000)
        back.append(total - (finished - created) * 1000)
    result.run_queue_p50_ms = percentile(queue, 50)
    result.run_step_p50_ms = percentile(step, 50)
    result.run_result_p50_ms = percentile(back, 50)


def report(results: Sequence[LatencyResult]) -> str:
    """Section (a) as text."""
    rows = [
        [
            f"agentfleet {r.config}",
            r.plain_p50_ms,
            r.plain_p99_ms,
            r.run_p50_ms,
            r.run_p99_ms,
            ratio(r.run_p50_ms, r.plain_p50_ms),
            ratio(r.run_p99_ms, r.plain_p99_ms),
            r.run_queue_p50_ms,
            r.run_step_p50_ms,
            r.run_result_p50_ms,
            r.errors,
        ]
        for r in results
    ]
    headers = [
        "agents pool", "plain p50", "plain p99", "run p50", "run p99", "ratio p50", "ratio p99",
        "queued p50", "step p50", "to caller p50", "errors",
    ]  # fmt: skip
    n = results[0].n if results else 0
    text = table(
        f"(a) latency: {n} sequential round trips each, ms, alternating plain Celery "
        "noop apply_async().get() and\n    a one-step run (submit_run + AsyncResult.get); "
        f"zero-latency simulator; tools prefork 1x{TOOLS_POOL.concurrency} running\n"
        "    run parts (worker timestamps):"
        " queued = created to step start, step = the step incl. its LLM call,\n    to caller ="
        " step end to the caller holding the result",
        headers,
        rows,
    )
    if results:
        # The fleet's own agents pool, unless --pools left it out.
        chosen = [r for r in results if r.config.startswith(FLEET_AGENTS_POOL)]
        first = (chosen or list(results))[0]
        p50 = ratio(first.run_p50_ms, first.plain_p50_ms)
        met = verdict(p50 <= TARGET_LATENCY_RATIO)
        text += f"\n\n{first.config}: p50 ratio {fmt(p50, 2)} (target <= "
        text += f"{TARGET_LATENCY_RATIO:g}x: {met})"
    return text
