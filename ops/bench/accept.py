"""Section (d), accept: runs accepted per second with no worker running."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import redis

from agentfleet.producer.auth import create_key
from agentfleet.tasks import names
from ops.bench._common import ENQUEUE_THREADS, ONE_STEP_PROMPT, cpu_cell, percentile, ratio, table
from ops.bench._stack import Bench, Fleet, HttpSubmitter, start_api
from ops.stack import Proc, StackError


@dataclass
class AcceptResult:
    """Section (d): runs accepted through one path by ``clients`` at once, no worker running."""

    config: str
    items: int
    clients: int
    per_s: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    #: Messages that reached the ``agents`` queue: must equal ``items``.
    queued: int = 0
    #: CPU seconds over the measured window: ``server`` is the API (when there is one).
    cpu_s: dict[str, float] = field(default_factory=dict)
    busy_pct: float = math.nan
    problem: str = ""


def timed_calls(
    submit: Callable[[], str], count: int, clients: int, timeout: float
) -> tuple[list[str], float, list[float]]:
    """Call ``submit`` ``count`` times from ``clients`` threads: IDs, seconds, ms per call."""
    durations: list[float] = []

    def one(_: int) -> str:
        start = time.perf_counter()
        item = submit()
        durations.append((time.perf_counter() - start) * 1000)  # atomic under the GIL
        return item

    start = time.perf_counter()
    with ThreadPoolExecutor(clients, thread_name_prefix="client") as pool:
        ids = list(pool.map(one, range(count), timeout=timeout))
    return ids, time.perf_counter() - start, durations


def measure(bench: Bench) -> list[AcceptResult]:
    """Section (d): runs accepted per second by each path, with no worker running."""
    results = [_accept_apply_async(bench), _accept_in_process(bench)]
    results.extend(_accept_http(bench, processes) for processes in (1, 2))
    return results


def _accept_apply_async(bench: Bench) -> AcceptResult:
    fleet = Fleet.connect(bench.fresh_db())
    entry = fleet.app.tasks[names.RUN]
    result = AcceptResult("Celery apply_async(agentfleet.run)", bench.sizes.accept_n, 0)
    try:
        payload = {"request": {"input": ONE_STEP_PROMPT}}
        _accept(bench, result, fleet, lambda: str(entry.apply_async(kwargs=payload).id), [])
    finally:
        fleet.close()
    return result


def _accept_in_process(bench: Bench) -> AcceptResult:
    fleet = Fleet.connect(bench.fresh_db())
    result = AcceptResult("submit_run in process", bench.sizes.accept_n, 0)
    try:
        _accept(bench, result, fleet, lambda: fleet.submit(ONE_STEP_PROMPT), [])
    finally:
        fleet.close()
    return result


def _accept_http(bench: Bench, processes: int) -> AcceptResult:
    fleet = Fleet.connect(bench.fresh_db())
    result = AcceptResult(f"POST /v1/runs, uvicorn x{processes}", bench.sizes.accept_n, 0)
    try:
        with bench.workers([]) as procs:
            api, base_url = start_api(bench, fleet.settings.redis.redis_url, processes)
            procs.append(api)
            key = create_key(fleet.store.redis, fleet.settings, "bench")
            submitter = HttpSubmitter(base_url, key)
            try:
                _accept(bench, result, fleet, submitter, [api])
            finally:
                submitter.close()
    except (StackError, OSError) as exc:
        result.problem = f"{type(exc).__name__}: {exc}"
    finally:
        fleet.close()
    return result


def _accept(
    bench: Bench, result: AcceptResult, fleet: Fleet, submit: Callable[[], str], server: list[Proc]
) -> None:
    result.clients = ENQUEUE_THREADS
    queue = fleet.store.redis
    try:
        # Warm-up: connections, the API's worker processes, first-call caches.
        timed_calls(submit, 200, ENQUEUE_THREADS, 120)
        before = int(queue.llen("agents"))
        meter = bench.meter({"server": server})
        meter.start()
        ids, seconds, durations = timed_calls(submit, result.items, ENQUEUE_THREADS, 300)
        result.cpu_s, result.busy_pct = meter.stop(), meter.busy_pct
    except (StackError, OSError, redis.RedisError, TimeoutError, httpx.HTTPError) as exc:
        result.problem = f"{type(exc).__name__}: {exc}"
        return
    result.per_s = len(ids) / seconds
    result.p50_ms, result.p99_ms = percentile(durations, 50), percentile(durations, 99)
    result.queued = int(queue.llen("agents")) - before
    if result.queued != result.items:
        result.problem = f"{result.queued} messages queued for {result.items} accepted runs"


def per_item_ms(cpu: dict[str, float], name: str, items: int) -> float:
    """CPU milliseconds of ``name`` per item; NaN when it was not measured."""
    return cpu_cell(cpu, name) * 1000 / items if items else math.nan


def report(results: Sequence[AcceptResult]) -> str:
    """Section (d) as text."""
    base = results[0].per_s if results else math.nan
    rows = [
        [
            r.config,
            r.items,
            r.per_s,
            ratio(r.per_s, base),
            r.p50_ms,
            r.p99_ms,
            r.queued,
            per_item_ms(r.cpu_s, "server", r.items) if "server" in r.cpu_s else math.nan,
            per_item_ms(r.cpu_s, "redis", r.items),
            per_item_ms(r.cpu_s, "bench", r.items),
            r.busy_pct,
        ]
        for r in results
    ]
    headers = [
        "path", "runs", "accepted/s", "vs apply_async", "p50 ms", "p99 ms", "queued",
        "cpu ms/run api", "cpu ms/run redis", "cpu ms/run clients", "busy %",
    ]  # fmt: skip
    clients = results[0].clients if results else ENQUEUE_THREADS
    return table(
        f"(d) accept: runs enqueued by {clients} concurrent clients (threads of this process), "
        "no worker running\n    apply_async = Celery's publish of the entry task (the worker "
        "creates the record); submit_run = record\n    + publish, what the API does per "
        "request; POST = over HTTP (httpx, kept-alive connections)\n    CPU per accepted run "
        f"over the measured window; clients and API share the {os.cpu_count()} cores",
        headers,
        rows,
    )
