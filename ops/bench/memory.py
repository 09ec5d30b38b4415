"""Section (f), memory: Redis and worker memory per run parked on a slow LLM call."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from agentfleet.tasks import keys
from ops.bench._common import FLEET_AGENTS_POOL, ONE_STEP_PROMPT, AgentsPool, table
from ops.bench._meters import Tracker, enqueue_many, group_processes, run_probe
from ops.bench._stack import Bench, Fleet
from ops.stack import Proc, StackError, wait_for

#: Section (f): seconds each parked run's LLM call takes; long enough to sample memory.
PARK_LLM_S = 40.0
PARK_PROMPT = f"[[latency:{PARK_LLM_S:g}]] parked"
#: Section (f) parks each run's record and messages next to Celery's bookkeeping; this many
#: runs are sampled with ``MEMORY USAGE`` to tell the two apart.
RECORD_SAMPLE = 50

PARK_AGENTS = AgentsPool(FLEET_AGENTS_POOL, 500, 2)


@dataclass
class MemoryResult:
    """Section (f): ``runs`` runs parked on a :data:`PARK_LLM_S` LLM call at once."""

    config: str
    runs: int
    #: ``first``: the workers make threads and connections; ``again``: they reuse them.
    phase: str
    #: LLM calls the simulator held when memory was sampled (all ``runs`` once parked).
    in_flight: int = 0
    #: ``used_memory`` growth per run: keys, connections and their buffers.
    redis_kb_per_run: float = math.nan
    #: Growth of the keys alone (``MEMORY USAGE`` of every key): runs, messages, results.
    keys_kb_per_run: float = math.nan
    #: ``MEMORY USAGE`` of a run's own keys (record, transcript, lease), sampled.
    record_kb_per_run: float = math.nan
    rss_kb_per_run: float = math.nan
    #: Growth per run once they all finished: what a run keeps until its TTL.
    redis_kb_per_finished_run: float = math.nan
    keys_kb_per_finished_run: float = math.nan
    done: int = 0
    failed: int = 0
    problem: str = ""


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in a process group (see :func:`group_processes`)."""
    pages = 0
    for pid, _ in group_processes(pgid):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/statm") as statm:  # it exited
            pages += int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def settle(client: redis.Redis, timeout: float = 30.0) -> None:
    """Wait until the broker holds no unacknowledged message.

    A run's record is final before Celery stores its result and acknowledges the message, so
    memory sampled as soon as the records say "done" would still count that bookkeeping.
    """
    wait_for(lambda: client.hlen("unacked") == 0, timeout, "every message to be acknowledged")


def redis_used_memory(client: redis.Redis) -> int:
    """Bytes Redis has allocated (``INFO memory`` ``used_memory``), client buffers included."""
    return int(client.info("memory")["used_memory"])


def keys_memory(client: redis.Redis) -> int:
    """Bytes every key of the database takes (``MEMORY USAGE``, all elements), summed.

    Exact and steady, unlike ``used_memory``, but it leaves out connections and buffers.
    """
    total = 0
    batch: list[str] = []
    for key in [*client.scan_iter(count=1000), None]:
        if key is not None:
            batch.append(key)
        if batch and (key is None or len(batch) == 1000):
            pipe = client.pipeline(transaction=False)
            for name in batch:
                pipe.memory_usage(name, samples=0)
            total += sum(int(n or 0) for n in pipe.execute())
            batch = []
    return total


def steady_used_memory(client: redis.Redis, timeout: float) -> int:
    """``used_memory`` once three samples a second apart agree within 0.5 %.

    After a burst Redis holds megabytes of client query and output buffers, which it shrinks
    over the next few seconds: sampled at once, they would be charged to the runs. After
    ``timeout``, the last sample.
    """
    deadline = time.monotonic() + timeout
    samples = [redis_used_memory(client)]
    while time.monotonic() < deadline:
        time.sleep(1.0)
        samples = [*samples[-2:], redis_used_memory(client)]
        if len(samples) == 3 and max(samples) - min(samples) <= samples[-1] * 0.005:
            break
    return samples[-1]


def measure(bench: Bench) -> list[MemoryResult]:
    """Section (f): memory per run parked on a slow LLM call, for each number of runs."""
    return [row for runs in bench.sizes.park_runs for row in _memory_one(bench, runs)]


def _memory_one(bench: Bench, runs: int) -> list[MemoryResult]:
    fleet = Fleet.connect(bench.fresh_db())
    rows = [MemoryResult(PARK_AGENTS.label, runs, phase) for phase in ("first", "again")]
    url = fleet.settings.redis.redis_url
    procs: list[Proc] = []
    try:
        with bench.workers(procs):
            agents = bench.start_agents(url, PARK_AGENTS)
            procs.extend(agents)
            bench.stack.wait_workers(fleet.app, PARK_AGENTS.processes, timeout=120)
            bench.wait_runs(fleet, ONE_STEP_PROMPT, 20, procs, timeout=60)
            for row in rows:
                _park(bench, row, fleet, agents)
    except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
        for row in rows:
            row.problem = row.problem or f"{type(exc).__name__}: {exc}"
        rows[-1].problem += f"\n{bench.log_tails(procs)}"
    finally:
        fleet.close()
    return rows


def _park(bench: Bench, row: MemoryResult, fleet: Fleet, agents: Sequence[Proc]) -> None:
    client = fleet.store.redis

    def rss() -> int:
        return sum(group_rss_bytes(p.popen.pid) for p in agents)

    settle(client)
    redis_before, rss_before = steady_used_memory(client, 30), rss()
    keys_before = keys_memory(client)
    ids, _ = enqueue_many(lambda: fleet.submit(PARK_PROMPT), row.runs, 120)

    def parked() -> bool:
        row.in_flight = int(bench.simulator_stats()["in_flight"])
        return row.in_flight >= row.runs

    # Well before the first of them returns, or the count could never be reached.
    wait_for(parked, PARK_LLM_S / 4, f"{row.runs} runs parked on the simulator", 0.2)
    kib = 1024 * row.runs
    # Before the first parked call returns: they all started within the wait above.
    row.redis_kb_per_run = (steady_used_memory(client, PARK_LLM_S / 2) - redis_before) / kib
    row.rss_kb_per_run = (rss() - rss_before) / kib
    row.keys_kb_per_run = (keys_memory(client) - keys_before) / kib
    pipe = client.pipeline(transaction=False)
    for run_id in ids[:RECORD_SAMPLE]:
        p = fleet.store.settings.redis.key_prefix
        for key in (keys.run(p, run_id), keys.run_messages(p, run_id), keys.run_lease(p, run_id)):
            pipe.memory_usage(key, samples=0)
    sampled = sum(int(n or 0) for n in pipe.execute())
    row.record_kb_per_run = sampled / 1024 / min(len(ids), RECORD_SAMPLE)
    tracker = Tracker(ids, run_probe(fleet.store))
    deadline = time.monotonic() + PARK_LLM_S * 3 + 60
    row.problem = tracker.wait(deadline, agents)
    finished = tracker.succeeded("succeeded")
    row.done, row.failed = len(finished), len(tracker.finished) - len(finished)
    settle(client)
    row.redis_kb_per_finished_run = (steady_used_memory(client, 30) - redis_before) / kib
    row.keys_kb_per_finished_run = (keys_memory(client) - keys_before) / kib


def report(results: Sequence[MemoryResult]) -> str:
    """Section (f) as text."""
    rows = [
        [
            r.config,
            r.runs,
            r.phase,
            r.in_flight,
            r.redis_kb_per_run,
            r.keys_kb_per_run,
            r.record_kb_per_run,
            r.rss_kb_per_run,
            r.redis_kb_per_finished_run,
            r.keys_kb_per_finished_run,
            f"{r.done}/{r.failed}",
        ]
        for r in results
    ]
    headers = [
        "agents pool", "runs parked", "time", "LLM calls held", "Redis KB/run", "keys KB/run",
        "run's own keys KB", "worker RSS KB/run", "Redis KB/run done", "keys KB/run done",
        "ok/failed",
    ]  # fmt: skip
    return table(
        f"(f) memory per run in flight: one-step runs parked on a {PARK_LLM_S:g} s LLM call, "
        "sampled once all are waiting\n    Redis = used_memory delta (keys, connections, "
        "buffers); keys = MEMORY USAGE of every key; run's own\n    keys = record + transcript "
        "+ lease; worker RSS = agents processes' resident memory delta;\n    first = threads "
        "and connections made, again = reused; done = once the runs finished (kept until "
        "their TTL)",
        headers,
        rows,
    )
