"""Section (b), throughput: a backlog enqueued first, then drained on the same cores."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis

from ops import bench_plain
from ops.bench._common import (
    ONE_STEP_PROMPT,
    PLAIN_LLM,
    AgentsPool,
    cpu_cell,
    fleet_cpu_s,
    ms_per,
    ratio,
    table,
    verdict,
)
from ops.bench._meters import Probe, Tracker, enqueue_many, plain_probe, run_probe
from ops.bench._stack import Bench, Fleet, plain_producer
from ops.stack import Proc, StackError

#: Process groups of a configuration's workers, as the CPU meter names them.
WORKER_GROUPS = ("workers", "agents", "tools", "batch")

#: The target: the best configuration's steps/s at least this share of the floor's (stock
#: Celery making the same LLM calls with the SDK's default client) in the same bench run.
TARGET_VS_FLOOR = 1.0
#: The floor's LLM transports: the SDK's default, then the best stock setup (aiohttp).
FLOOR_TRANSPORTS = ("", "aiohttp")

#: Section (b): the one-process pool of section (a), then pools using both cores.
THROUGHPUT_POOLS = (
    AgentsPool("gevent", 100),
    AgentsPool("gevent", 100, 2),
    AgentsPool("threads", 100, 2),
    AgentsPool("prefork", 2),
)


@dataclass
class DrainResult:
    """Section (b): one backlog drained by one configuration."""

    config: str
    items: int
    enqueue_per_s: float = math.nan
    #: ``done - 1`` completions over the time from the first to the last completion.
    drain_per_s: float = math.nan
    #: ``done`` completions over the time from spawning the workers to the last completion.
    from_start_per_s: float = math.nan
    done: int = 0
    failed: int = 0
    #: CPU seconds per process group from the first completion to the last: the workers
    #: (``workers`` for stock Celery; ``agents``, ``tools`` and ``batch`` for the fleet), the
    #: API (``api``, idle by then: the backlog was submitted before), ``redis``, ``sim`` and
    #: the bench's own process (``bench``, the load generator).
    cpu_s: dict[str, float] = field(default_factory=dict)
    #: The workers' CPU per item over that window.
    cpu_ms_per_item: float = math.nan
    #: The configuration's own CPU per item (workers, API and Redis: ``FLEET_CPU``).
    fleet_ms_per_item: float = math.nan
    #: LLM requests the simulator answered over that window, and its CPU per request.
    sim_requests: int = 0
    sim_ms_per_request: float = math.nan
    #: Percent of the machine's cores busy over that window.
    busy_pct: float = math.nan
    problem: str = ""


def measure(bench: Bench) -> list[DrainResult]:
    """Section (b): a backlog of M items enqueued first, then drained on the same cores.

    The first row is the baseline; the second, stock Celery making one openai SDK call
    per task, is the floor of an LLM step on this machine (see :mod:`ops.bench_plain`).
    """
    results = [_drain_plain(bench)]
    results.extend(_drain_plain(bench, llm=True, transport=t) for t in FLOOR_TRANSPORTS)
    for agents in bench.on_each_transport(THROUGHPUT_POOLS):
        if agents.pool in bench.families:
            results.append(_drain_runs(bench, agents))
    return results


def _drain_plain(bench: Bench, llm: bool = False, transport: str = "") -> DrainResult:
    """Stock Celery's no-op tasks, or with ``llm`` its one-SDK-call tasks (the floor), their
    calls on the SDK's default client or (``transport``) on an aiohttp event loop."""
    url = bench.fresh_db()
    app = plain_producer(url)
    client = redis.Redis.from_url(url)
    submit: Callable[[], str]
    if llm:
        step = app.tasks[bench_plain.LLM_STEP]
        messages = [{"role": "user", "content": ONE_STEP_PROMPT}]
        label = f"{PLAIN_LLM} prefork 1x2 {transport}".rstrip()
        result = DrainResult(label, bench.sizes.backlog_m)
        submit = lambda: str(step.apply_async((messages,)).id)  # noqa: E731
    else:
        noop = bench_plain.noop_task(app)
        result = DrainResult("plain Celery prefork 1x2", bench.sizes.backlog_m)
        submit = lambda: str(noop.apply_async().id)  # noqa: E731
    try:
        _drain(
            bench,
            result,
            submit=submit,
            probe=plain_probe(app, client),
            ok="SUCCESS",
            start_workers=lambda: {"workers": [bench.start_plain(url, transport=transport)]},
        )
    finally:
        app.close()
        client.close()
    return result


def _drain_runs(bench: Bench, agents: AgentsPool) -> DrainResult:
    fleet = Fleet.connect(bench.fresh_db())
    result = DrainResult(f"agentfleet {agents.label}", bench.sizes.backlog_m)
    url = fleet.settings.redis.redis_url

    def start_workers() -> dict[str, list[Proc]]:
        return {
            "agents": bench.start_agents(url, agents),
            "tools": [bench.start_tools(url)],
            "batch": [bench.start_batch(url)],
        }

    api: list[Proc] = []
    try:
        with bench.workers(api), bench.submission(fleet, api) as submission:
            _drain(
                bench,
                result,
                submit=submission.runs_of(ONE_STEP_PROMPT),
                probe=run_probe(fleet.store),
                ok="succeeded",
                start_workers=start_workers,
                api=submission.api,
            )
    except (StackError, OSError, redis.RedisError) as exc:
        result.problem = f"{type(exc).__name__}: {exc}"
    finally:
        fleet.close()
    return result


def _drain(
    bench: Bench,
    result: DrainResult,
    submit: Callable[[], str],
    probe: Probe,
    ok: str,
    start_workers: Callable[[], dict[str, list[Proc]]],
    api: Sequence[Proc] = (),
) -> None:
    """Enqueue the backlog, then start the workers and time them draining it."""
    try:
        ids, seconds = enqueue_many(submit, result.items, 300)
        result.enqueue_per_s = result.items / seconds
        tracker = Tracker(ids, probe)
        # Worker start-up, then no slower than 20 items/s: far below any healthy rate.
        deadline = time.monotonic() + 60 + result.items / 20
        with bench.workers([]) as procs:
            spawned = time.time()
            groups = start_workers()
            procs.extend(p for group in groups.values() for p in group)
            # CPU is counted from the first completion, like drain/s, so that the
            # workers' start-up (imports, forks) is not charged to the items.
            meter = bench.meter({**groups, **({"api": api} if api else {})})

            def start_counting() -> None:
                bench.simulator_stats(reset=True)
                meter.start()

            result.problem = tracker.wait(deadline, procs, on_first=start_counting)
            result.cpu_s, result.busy_pct = meter.stop(), meter.busy_pct
            result.sim_requests = int(bench.simulator_stats()["requests"])
            if result.problem:
                result.problem += "\n" + bench.log_tails(procs)
    except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
        result.problem = f"{type(exc).__name__}: {exc}"
        return
    finished = tracker.succeeded(ok)
    result.done, result.failed = len(finished), len(tracker.finished) - len(finished)
    if len(finished) >= 2:
        first, last = finished[0].at, finished[-1].at
        result.drain_per_s = (len(finished) - 1) / (last - first)
        result.from_start_per_s = len(finished) / (last - spawned)
    counted = len(tracker.finished) - tracker.finished_at_first_sight
    if result.cpu_s:
        workers = sum(result.cpu_s.get(name, 0.0) for name in WORKER_GROUPS)
        result.cpu_ms_per_item = ms_per(workers, counted)
        result.fleet_ms_per_item = ms_per(fleet_cpu_s(result.cpu_s), counted)
        result.sim_ms_per_request = ms_per(cpu_cell(result.cpu_s, "sim"), result.sim_requests)


#: The CPU columns of sections (b) and (c): process group -> column name.
CPU_COLUMNS = {
    "workers": "workers",
    "agents": "agents",
    "tools": "tools",
    "batch": "batch",
    "api": "api",
    "redis": "redis",
    "sim": "sim",
    "bench": "load gen",
}


def report(results: Sequence[DrainResult]) -> str:
    """Section (b) as text."""
    plain = results[0].drain_per_s if results else math.nan
    rows = [
        [
            r.config,
            r.items,
            r.enqueue_per_s,
            r.drain_per_s,
            r.from_start_per_s,
            ratio(r.drain_per_s, plain),
            f"{r.done}/{r.failed}",
            r.cpu_ms_per_item,
            r.fleet_ms_per_item,
            r.sim_ms_per_request,
            r.busy_pct,
            *(cpu_cell(r.cpu_s, name) for name in CPU_COLUMNS),
        ]
        for r in results
    ]
    headers = [
        "configuration", "items", "enq/s", "drain/s", "incl. boot/s", "vs plain", "ok/failed",
        "worker cpu ms/item", "own cpu ms/item", "sim cpu ms/req", "busy %",
        *(f"cpu {CPU_COLUMNS[name]}" for name in CPU_COLUMNS),
    ]  # fmt: skip
    text = table(
        "(b) throughput: backlog enqueued with no worker running, then drained on "
        f"{os.cpu_count()} cores\n"
        "    drain/s = (done - 1) / (last - first completion); incl. boot/s = done / (last "
        "completion - worker spawn)\n    agentfleet items are one-step runs (1 agent step "
        "each); the simulator and Redis share the same cores\n    CPU in seconds from the first "
        "completion to the last (worker start-up excluded); busy % = share of all cores busy\n"
        "    own cpu = the configuration's workers + API + Redis (not the simulator, which "
        "stands for a remote provider,\n    nor the load generator); sim cpu ms/req = the "
        "simulator's CPU per LLM request it answered in the window",
        headers,
        rows,
    )
    floors = [r for r in results if r.config.startswith(PLAIN_LLM)]
    ours = [r for r in results[1:] if not r.config.startswith(PLAIN_LLM)]
    for floor in floors:
        text += f"\nvs {floor.config}: " + ", ".join(
            f"{r.config} {ratio(r.drain_per_s, floor.drain_per_s):.2f}x steps/s, "
            f"{ratio(r.fleet_ms_per_item, floor.fleet_ms_per_item):.2f}x own CPU per step"
            for r in ours
        )
    if floors and ours:
        best = max(ours, key=lambda r: ratio(r.drain_per_s, floors[0].drain_per_s))
        times = ratio(best.drain_per_s, floors[0].drain_per_s)
        text += f"\n\nbest: {best.config}, steps/s {times:.2f}x the floor's "
        text += f"(target >= {TARGET_VS_FLOOR:g}x: {verdict(times >= TARGET_VS_FLOOR)})"
    return text
