"""Measure agentfleet against stock Celery on one private Redis: ``python -m ops.bench``.

Three sections, each compared with a baseline measured in the same run (machines of this kind
are noisy, so read the ratios, not the absolute numbers):

``a`` latency
    Sequential round trips: plain ``noop.apply_async().get()`` against a one-step run
    (``submit_run`` then ``AsyncResult(run_id).get()``), zero-latency simulator.
``b`` throughput
    A backlog enqueued while no worker runs, then drained on the same cores: plain no-op
    tasks/s against one-step runs (agent steps)/s, for several ``agents`` pools.
``c`` concurrency
    Two-step runs at 2 s of LLM latency (step 1 asks for a ``text_stats`` call, step 2
    answers): effective concurrency = total LLM wait / wall time, for each ``agents`` pool.
``d`` accept
    Runs accepted per second with no worker running, from concurrent clients: ``POST
    /v1/runs`` through the API (one and two uvicorn processes) and ``submit_run`` in process,
    against Celery's own ``apply_async`` of the entry task ``agentfleet.run``.
``e`` chord
    A run whose model asks for 100 tool calls at once (a chord of 100 ``agentfleet.tool.call``
    tasks and the next step as its body) against a plain Celery chord of 100 no-ops and a
    collecting body, each on a prefork 1x2 worker.
``f`` memory
    Runs parked on a slow LLM call (the simulator waits): Redis ``used_memory`` and the
    ``agents`` workers' RSS per run in flight, the first time (threads and connections are
    made) and again (they are reused).

Every configuration gets its own Redis database, so work a failed configuration leaves behind
(a timeout, a dead worker) cannot leak into the next one. That Redis keeps no append-only file
unless ``--appendfsync`` asks for one: ``always`` is how production runs it (an fsync before each
write is answered, ``ops.stack.DURABLE_REDIS``), ``everysec`` the cheaper setting that a crash
of the host can cost the last second of. Every process is started through
:class:`~ops.stack.Stack` and stopped when the bench ends; every wait has a deadline.

Usage::

    python -m ops.bench [--quick] [--only a,b,c,d,e,f] [--pools gevent,threads,prefork]
                        [--appendfsync no|everysec|always] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import redis
from celery import Celery, canvas

from agentfleet.producer.auth import create_key
from agentfleet.tasks import intake, names
from agentfleet.tasks.models import DEFAULT_TENANT, RunRequest
from agentfleet.tasks.redisconn import get_redis
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.store import RunStore
from agentfleet.workers.conf import celery_config
from agentfleet.workers.factory import create_app
from ops import bench_plain
from ops.stack import PoolSpec, Proc, Stack, StackError, free_port, wait_for

#: A plain prompt: the simulator answers it in one step ("Echo: ..."), no tool call.
ONE_STEP_PROMPT = "bench"
#: Seconds the simulator waits on each LLM call of section (c).
SLOW_LLM_S = 2.0
#: Step 1 asks for one ``text_stats`` call (a fast tool); step 2 answers from its result.
TWO_STEP_PROMPT = f'call text_stats {{"text": "x"}} [[latency:{SLOW_LLM_S:g}]]'
#: The same conversation without the latency directive, to warm the whole path up.
WARM_TWO_STEP_PROMPT = 'call text_stats {"text": "x"}'

#: Section (e): tool calls the model asks for in one turn, so the chord's header size.
CHORD_SIZE = 100
CHORD_PROMPT = " ".join(['call text_stats {"text": "x"}'] * CHORD_SIZE)
#: Section (f): seconds each parked run's LLM call takes; long enough to sample memory.
PARK_LLM_S = 40.0
PARK_PROMPT = f"[[latency:{PARK_LLM_S:g}]] parked"
#: Section (f) parks each run's record and messages next to Celery's bookkeeping; this many
#: runs are sampled with ``MEMORY USAGE`` to tell the two apart.
RECORD_SAMPLE = 50

#: Every section, in the order they run (see the module docstring).
SECTIONS = ("a", "b", "c", "d", "e", "f")

#: Targets each section is read against.
TARGET_LATENCY_RATIO = 2.0
TARGET_THROUGHPUT_RATIO = 0.5
TARGET_CONCURRENCY = 500.0

#: Threads submitting runs (or plain tasks) when a section enqueues many at once.
ENQUEUE_THREADS = 16
#: The ``tools`` pool of every configuration: tool calls are CPU work, served by prefork.
TOOLS_POOL = PoolSpec("tools", "prefork", 2)
#: Redis databases for the per-configuration isolation described in the module docstring.
REDIS_DATABASES = 64
#: A worker gets this long to finish its tasks on SIGTERM before its group is killed.
STOP_GRACE_S = 15.0

#: What Celery logs when a task is put back with a countdown: ``... retry: Retry in 1.2s``.
RETRY_LOG_LINE = re.compile(r" retry: Retry in (\d+(?:\.\d+)?)s")

_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """How much work each section does."""

    latency_n: int
    backlog_m: int
    runs_r: int
    prefork_runs: int
    prefork_wide_runs: int
    accept_n: int
    chord_reps: int
    park_runs: tuple[int, ...]


FULL = Sizes(
    latency_n=500,
    backlog_m=3000,
    runs_r=2000,
    prefork_runs=40,
    prefork_wide_runs=400,
    accept_n=3000,
    chord_reps=10,
    park_runs=(100, 500),
)
QUICK = Sizes(
    latency_n=100,
    backlog_m=600,
    runs_r=200,
    prefork_runs=8,
    prefork_wide_runs=128,
    accept_n=500,
    chord_reps=3,
    park_runs=(50,),
)


@dataclass(frozen=True)
class AgentsPool:
    """The ``agents`` side of a configuration: ``processes`` workers of ``pool -c concurrency``."""

    pool: str
    concurrency: int
    processes: int = 1

    @property
    def label(self) -> str:
        """How tables name the configuration, e.g. ``gevent 2x1000``."""
        return f"{self.pool} {self.processes}x{self.concurrency}"

    @property
    def slots(self) -> int:
        """Tasks the configuration can run at once."""
        return self.processes * self.concurrency


#: The pool family of the fleet's own ``agents`` workers (chosen by section c): the one the
#: latency target is read against.
FLEET_AGENTS_POOL = "threads"

#: Section (a): the pool the fleet would use for LLM steps, per pool family.
LATENCY_POOLS = {
    "gevent": AgentsPool("gevent", 100),
    "threads": AgentsPool("threads", 100),
    "prefork": AgentsPool("prefork", 2),
}

#: Section (b): the one-process pool of section (a), then pools using both cores.
THROUGHPUT_POOLS = (
    AgentsPool("gevent", 100),
    AgentsPool("gevent", 100, 2),
    AgentsPool("threads", 100, 2),
    AgentsPool("prefork", 2),
)


#: How tables name stock Celery running the same LLM calls (:mod:`ops.bench_plain`): a floor.
PLAIN_LLM = "plain Celery + openai (floor)"
#: Section (c): the pool the floor runs its LLM calls on, the fleet's own at its size.
PLAIN_CONCURRENCY_POOL = AgentsPool(FLEET_AGENTS_POOL, 500, 2)

#: Sections (e) and (f): the fleet's own ``agents`` pool (threads, chosen by section c), one
#: process for (e), whose two LLM steps per run are not what it measures.
CHORD_AGENTS = AgentsPool(FLEET_AGENTS_POOL, 100)
PARK_AGENTS = AgentsPool(FLEET_AGENTS_POOL, 500, 2)


def concurrency_configs(sizes: Sizes) -> list[tuple[AgentsPool, int]]:
    """Section (c): each ``agents`` pool with the number of runs it gets.

    Prefork holds one LLM call per child, so R runs of 2 x 2 s take R * 4 s / slots: it gets
    few runs, or the bench would take an hour to say what the arithmetic already says.
    """
    return [
        (AgentsPool("prefork", 2), sizes.prefork_runs),
        (AgentsPool("prefork", 64), sizes.prefork_wide_runs),
        (AgentsPool("threads", 500, 2), sizes.runs_r),
        (AgentsPool("gevent", 1000), sizes.runs_r),
        (AgentsPool("gevent", 1000, 2), sizes.runs_r),
    ]


# --- results -----------------------------------------------------------------------------------
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
    #: CPU seconds per process group from the first completion to the last.
    cpu_s: dict[str, float] = field(default_factory=dict)
    #: The workers' CPU per item over that window.
    cpu_ms_per_item: float = math.nan
    #: Percent of the machine's cores busy over that window.
    busy_pct: float = math.nan
    problem: str = ""


@dataclass
class ConcurrencyResult:
    """Section (c): ``runs`` two-step runs at :data:`SLOW_LLM_S` through one configuration."""

    config: str
    runs: int
    enqueue_s: float = math.nan
    wall_s: float = math.nan
    effective_concurrency: float = math.nan
    max_llm_in_flight: int = 0
    #: Seconds from a run's creation to its end: 2 x 2 s at best.
    run_p50_s: float = math.nan
    run_max_s: float = math.nan
    #: Steps put back with a countdown (``retry: Retry in`` in the agents' logs), and the
    #: longest countdown: a few seconds for a provider error, minutes for a step that found
    #: its run's lease still held.
    step_retries: int = 0
    longest_retry_s: float = math.nan
    done: int = 0
    failed: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    #: Percent of the machine's cores busy from the first enqueue to the last completion.
    busy_pct: float = math.nan
    problem: str = ""


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


@dataclass
class ChordResult:
    """Section (e): ``reps`` chords of ``size`` header tasks, one after another, seconds."""

    config: str
    size: int
    reps: int
    wall_p50_s: float = math.nan
    wall_min_s: float = math.nan
    wall_max_s: float = math.nan
    #: For runs, from the records: creation to the first tool starting (step 1, publishing
    #: the chord), first tool start to last tool end, and from there to the run's end (the
    #: chord's join, step 2 with 100 tool results).
    before_tools_p50_s: float = math.nan
    tools_p50_s: float = math.nan
    after_tools_p50_s: float = math.nan
    done: int = 0
    problem: str = ""


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


# --- measuring helpers -------------------------------------------------------------------------
def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(pct / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) of every process in a process group.

    Workers are spawned in their own session, so a prefork worker and its children share the
    group; the reaped-children fields count children that already exited.
    """
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                raw = stat.read()
        except OSError:  # the process exited while we looked
            continue
        # The command name may contain spaces or parentheses: fields start after the last ')'.
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # field 5, pgrp
            ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / _CLK_TCK


def own_cpu_seconds() -> float:
    """CPU seconds of this process (every thread): the producer and the completion polling."""
    times = os.times()
    return times.user + times.system


def machine_busy_seconds() -> float:
    """Core-seconds the whole machine has been busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle, iowait; guest time is already inside user and nice
    return (sum(ticks) - idle) / _CLK_TCK


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in a process group (see :func:`group_cpu_seconds`)."""
    pages = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                raw = stat.read()
            with open(f"/proc/{entry.name}/statm") as statm:
                resident = int(statm.read().split()[1])
        except OSError:  # the process exited while we looked
            continue
        if int(raw[raw.rindex(")") + 2 :].split()[2]) == pgid:
            pages += resident
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


class CpuMeter:
    """CPU seconds each named process group uses between :meth:`start` and :meth:`stop`.

    Also how busy the whole machine was, which says whether a configuration ran out of cores
    or waited on something else.
    """

    def __init__(self, procs: dict[str, Sequence[Proc]]) -> None:
        self.procs = procs
        self._before: dict[str, float] = {}
        self._started = 0.0
        #: Percent of all cores busy between :meth:`start` and :meth:`stop`.
        self.busy_pct = math.nan

    def _sample(self) -> dict[str, float]:
        sample = {
            name: sum(group_cpu_seconds(p.popen.pid) for p in group)
            for name, group in self.procs.items()
        }
        sample["bench"] = own_cpu_seconds()
        return sample

    def start(self) -> None:
        """Take the starting sample."""
        self._before = self._sample()
        self._before["machine"] = machine_busy_seconds()
        self._started = time.monotonic()

    def stop(self) -> dict[str, float]:
        """CPU seconds per name since :meth:`start`, rounded for the tables."""
        after = self._sample()
        elapsed = time.monotonic() - self._started
        busy = machine_busy_seconds() - self._before.get("machine", math.nan)
        if elapsed > 0:
            self.busy_pct = round(busy / (elapsed * (os.cpu_count() or 1)) * 100, 1)
        return {name: round(after[name] - self._before.get(name, 0.0), 2) for name in after}


class Finished(NamedTuple):
    """What a finished item's record says."""

    status: str
    #: When it finished, epoch seconds (the worker's clock: same machine as ours).
    at: float
    #: Seconds from creation to finish; NaN when the record does not say.
    took: float = math.nan


#: Reads the state of some items from Redis: a :data:`Finished` or None per item.
Probe = Callable[[Sequence[str]], list[Finished | None]]


class Tracker:
    """Waits for items (runs or plain tasks) to finish, reading their state from Redis.

    Queues are FIFO, so items finish roughly in enqueue order: each poll reads a window at
    the head of the pending list, which keeps the polling cheap (the bench shares the cores
    with what it measures). Completion times come from the records the workers wrote, so
    how late the poll notices a completion does not change the numbers.
    """

    def __init__(self, ids: Sequence[str], probe: Probe, window: int = 256) -> None:
        self.pending = list(ids)
        self.finished: dict[str, Finished] = {}
        #: Items already finished when :meth:`wait` first saw one finish.
        self.finished_at_first_sight = 0
        self._probe = probe
        self._window = window

    def wait(
        self, deadline: float, watch: Sequence[Proc], on_first: Callable[[], object] | None = None
    ) -> str:
        """Poll until every item finished; the problem otherwise ("" when all finished).

        ``on_first`` is called as soon as a poll finds the first finished item.
        """
        while self.pending:
            if time.monotonic() > deadline:
                return f"timed out with {len(self.pending)} of {self.count} unfinished"
            head = self.pending[: self._window]
            still = []
            for item, state in zip(head, self._probe(head), strict=True):
                if state is None:
                    still.append(item)
                else:
                    self.finished[item] = state
            self.pending = still + self.pending[self._window :]
            if on_first is not None and self.finished:
                self.finished_at_first_sight = len(self.finished)
                on_first()
                on_first = None
            if still:  # the head is not done yet: give the workers the cores for a while
                dead = [p.name for p in watch if not p.alive()]
                if dead:
                    return f"{', '.join(dead)} exited with {len(self.pending)} unfinished"
                time.sleep(0.05)
        return ""

    @property
    def count(self) -> int:
        """Items tracked, finished or not."""
        return len(self.pending) + len(self.finished)

    def succeeded(self, ok: str) -> list[Finished]:
        """The items whose status is ``ok``, in order of completion."""
        return sorted((f for f in self.finished.values() if f.status == ok), key=lambda f: f.at)


def run_probe(store: RunStore) -> Probe:
    """A probe reading run records: finished once the status is terminal."""

    def probe(ids: Sequence[str]) -> list[Finished | None]:
        pipe = store.redis.pipeline(transaction=False)
        for run_id in ids:
            pipe.hmget(store.run_key(run_id), "status", "finished_at", "created_at")
        states: list[Finished | None] = []
        for status, finished_at, created_at in pipe.execute():
            if status in _TERMINAL and finished_at:
                at = float(finished_at)
                states.append(Finished(status, at, at - float(created_at or "nan")))
            else:
                states.append(None)
        return states

    return probe


def plain_probe(app: Celery, client: redis.Redis) -> Probe:
    """A probe reading plain Celery results: finished once the result is stored."""

    def probe(ids: Sequence[str]) -> list[Finished | None]:
        pipe = client.pipeline(transaction=False)
        for task_id in ids:
            pipe.get(app.backend.get_key_for_task(task_id))
        states: list[Finished | None] = []
        for raw in pipe.execute():
            if raw is None:
                states.append(None)
                continue
            meta = json.loads(raw)
            done_at = datetime.fromisoformat(meta["date_done"]).timestamp()
            states.append(Finished(str(meta["status"]), done_at))
        return states

    return probe


def retry_countdowns(proc: Proc) -> list[float]:
    """The countdown of every retry a worker logged, in log order."""
    with contextlib.suppress(OSError), proc.log.open(errors="replace") as log:
        return [float(m[1]) for line in log if (m := RETRY_LOG_LINE.search(line))]
    return []


def _routine(line: str) -> bool:
    # Celery logs every task ignored and succeeded at INFO (and, at DEBUG, every one received).
    if "INFO/" not in line:
        return False
    return " succeeded in " in line or line.rstrip().endswith((" received", " ignored"))


def log_tail(proc: Proc, lines: int, width: int = 240) -> str:
    """The last ``lines`` lines of a log that are not routine task chatter, cut to ``width``.

    What explains a failure (warnings, errors, tracebacks) is otherwise buried under the
    one-line-per-task INFO records of a busy worker.
    """
    try:
        text = proc.log.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    kept = [line[:width] for line in text if not _routine(line)]
    return "\n".join(kept[-lines:])


def enqueue_many(submit: Callable[[], str], count: int, timeout: float) -> tuple[list[str], float]:
    """Call ``submit`` ``count`` times from a thread pool; the IDs in order and the seconds."""
    start = time.perf_counter()
    with ThreadPoolExecutor(ENQUEUE_THREADS, thread_name_prefix="enqueue") as pool:
        ids = list(pool.map(lambda _: submit(), range(count), timeout=timeout))
    return ids, time.perf_counter() - start


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


class HttpSubmitter:
    """``POST /v1/runs`` with one kept-alive connection per calling thread."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self._local = threading.local()
        self._clients: list[httpx.Client] = []

    def __call__(self) -> str:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(
                base_url=self.base_url, timeout=30, headers=self.headers
            )
            self._clients.append(client)
        response = client.post("/v1/runs", json={"input": ONE_STEP_PROMPT})
        if response.status_code != 202:
            raise StackError(f"POST /v1/runs answered {response.status_code}: {response.text}")
        return str(response.json()["id"])

    def close(self) -> None:
        """Close every thread's connection."""
        for client in self._clients:
            client.close()


# --- the fleet and the baseline under test -------------------------------------------------------
def plain_producer(url: str) -> Celery:
    """The bench's producer for the baseline: :func:`ops.bench_plain.create_app` on ``url``.

    kombu keeps one process-wide limit for every app's connection pools and refuses to shrink
    a pool in use, so this producer takes agentfleet's ``broker_pool_limit`` instead of
    Celery's default of 10. Only the bench's own publishing is affected: the baseline worker
    runs the stock app.
    """
    app = bench_plain.create_app(url)
    app.conf.broker_pool_limit = celery_config(Settings())["broker_pool_limit"]
    return app


@dataclass
class Fleet:
    """The producer side of agentfleet on one Redis database, as the API holds it."""

    settings: Settings
    app: Celery
    store: RunStore

    @classmethod
    def connect(cls, url: str) -> Fleet:
        """A Celery app and a run store on ``url``."""
        settings = Settings(redis_url=url)
        return cls(settings, create_app(settings), RunStore(get_redis(settings), settings))

    def submit(self, prompt: str) -> str:
        """Create a run and enqueue its first step; the run ID."""
        run = intake.admit_run(RunRequest(input=prompt), self.settings, check_callback=True)
        return intake.submit_run(self.app, self.store, run, DEFAULT_TENANT)

    def close(self) -> None:
        """Release the broker and result-backend connections."""
        self.app.close()


class Bench:
    """One bench run: a private Redis and simulator, then the sections asked for."""

    def __init__(
        self, stack: Stack, sizes: Sizes, families: Sequence[str], appendfsync: str = "no"
    ) -> None:
        self.stack = stack
        self.sizes = sizes
        self.families = families
        self.appendfsync = appendfsync
        self.redis_base = ""
        self.simulator_base = ""
        self._next_db = 0

    def start(self) -> None:
        """Start Redis and the zero-latency simulator that every section shares."""
        aof = [] if self.appendfsync == "no" else ["--appendonly", "yes"]
        aof += [] if self.appendfsync == "no" else ["--appendfsync", self.appendfsync]
        url = self.stack.start_redis(["--databases", str(REDIS_DATABASES), *aof])
        self.redis_base = url.rsplit("/", 1)[0]
        self.simulator_base = self.stack.start_simulator(latency=0.0).removesuffix("/v1")

    # --- processes ---------------------------------------------------------------------------
    def fresh_db(self) -> str:
        """The URL of a Redis database no configuration has used yet."""
        self._next_db += 1
        if self._next_db >= REDIS_DATABASES:
            raise StackError(f"more than {REDIS_DATABASES - 1} configurations in one run")
        return f"{self.redis_base}/{self._next_db}"

    def _named(self, prefix: str) -> list[Proc]:
        return [p for p in self.stack.procs if p.name.startswith(prefix)]

    def start_agents(self, url: str, agents: AgentsPool) -> list[Proc]:
        """The ``agents`` worker processes of a configuration, on database ``url``."""
        env = {**self.stack.env(), "AGENTFLEET_REDIS_URL": url}
        spec = PoolSpec("agents", agents.pool, agents.concurrency)
        return [self.stack.start_worker(spec, env) for _ in range(agents.processes)]

    def start_tools(self, url: str) -> Proc:
        """The ``tools`` worker of a configuration, on database ``url``."""
        return self.stack.start_worker(
            TOOLS_POOL, {**self.stack.env(), "AGENTFLEET_REDIS_URL": url}
        )

    def start_plain(
        self, url: str, pool: str = "prefork", concurrency: int = 2, queue: str = bench_plain.QUEUE
    ) -> Proc:
        """A stock Celery worker for :mod:`ops.bench_plain` on database ``url``."""
        env = {
            **self.stack.env(),
            bench_plain.URL_ENV: url,
            bench_plain.LLM_URL_ENV: f"{self.simulator_base}/v1",
        }
        argv = [
            sys.executable, "-m", "celery", "-A", "ops.bench_plain", "worker",
            "-P", pool, "-c", str(concurrency), "-Q", queue,
            "-n", f"plain-{len(self.stack.procs)}@%h",
            # The flags Stack gives agentfleet's workers, so both log and start alike.
            "--without-mingle", "--without-gossip", "--loglevel", "INFO",
        ]  # fmt: skip
        return self.stack.spawn(f"worker-plain-{len(self.stack.procs)}", argv, env)

    def stop(self, procs: Sequence[Proc]) -> None:
        """Stop workers of one configuration: SIGTERM (warm shutdown), SIGKILL after a grace."""
        for proc in procs:
            if proc.alive():
                self.stack.kill(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            try:
                proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.stack.kill(proc, signal.SIGKILL)
                proc.popen.wait(timeout=5)

    @contextmanager
    def workers(self, procs: list[Proc]) -> Iterator[list[Proc]]:
        """Stop ``procs`` (and any added to the list inside the block) when the block ends."""
        try:
            yield procs
        finally:
            self.stop(procs)

    def meter(self, groups: dict[str, Sequence[Proc]]) -> CpuMeter:
        """A CPU meter over ``groups`` plus Redis and the simulator."""
        return CpuMeter({**groups, "redis": self._named("redis"), "sim": self._named("simulator")})

    def simulator_stats(self, reset: bool = False) -> dict[str, Any]:
        """The simulator's request counters (``max_in_flight`` and so on); zeroed if ``reset``."""
        if reset:
            return dict(httpx.post(f"{self.simulator_base}/_sim/reset", timeout=5).json())
        return dict(httpx.get(f"{self.simulator_base}/_sim/stats", timeout=5).json())

    def log_tails(self, procs: Sequence[Proc], lines: int = 12) -> str:
        """The end of each process's log, for a configuration that failed."""
        return "\n".join(f"--- {p.name} ({p.log}):\n{log_tail(p, lines)}" for p in procs)

    def wait_runs(
        self, fleet: Fleet, prompt: str, count: int, procs: Sequence[Proc], timeout: float
    ) -> Tracker:
        """Submit ``count`` runs of ``prompt`` and wait for them all (warm-ups)."""
        ids, _ = enqueue_many(lambda: fleet.submit(prompt), count, timeout)
        tracker = Tracker(ids, run_probe(fleet.store))
        problem = tracker.wait(time.monotonic() + timeout, procs)
        if problem:
            raise StackError(f"warm-up: {problem}")
        return tracker

    # --- (a) latency -------------------------------------------------------------------------
    def latency(self) -> list[LatencyResult]:
        """Section (a): plain ``apply_async().get()`` against a one-step run, N sequential.

        One plain worker serves as the baseline for every ``agents`` pool measured.
        """
        url = self.fresh_db()
        app = plain_producer(url)
        results: list[LatencyResult] = []
        try:
            with self.workers([self.start_plain(url)]) as plain:
                self.stack.wait_workers(app, 1)
                noop = bench_plain.noop_task(app)
                for _ in range(20):  # the pool children, the connections
                    noop.apply_async().get(timeout=30)
                for family, agents in LATENCY_POOLS.items():
                    if family in self.families:
                        results.append(self._latency_one(agents, noop, plain))
        except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
            failed = LatencyResult("plain Celery", self.sizes.latency_n)
            failed.problem = f"{type(exc).__name__}: {exc}"
            results.append(failed)
        finally:
            app.close()
        return results

    def _latency_one(self, agents: AgentsPool, noop: Any, plain: list[Proc]) -> LatencyResult:
        result = LatencyResult(agents.label, self.sizes.latency_n)
        fleet = Fleet.connect(self.fresh_db())
        url = fleet.settings.redis_url
        procs: list[Proc] = []
        try:
            with self.workers(procs):
                procs.extend([*self.start_agents(url, agents), self.start_tools(url)])
                self.stack.wait_workers(fleet.app, agents.processes + 1)
                # Warm up: pool children, HTTP and Redis connections, the tools children.
                self.wait_runs(fleet, ONE_STEP_PROMPT, 20, procs, timeout=60)
                self.wait_runs(fleet, WARM_TWO_STEP_PROMPT, 4, procs, timeout=60)
                self._measure_latency(result, noop, fleet, [*procs, *plain])
        except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
            result.problem = f"{type(exc).__name__}: {exc}\n{self.log_tails(procs)}"
        finally:
            fleet.close()
        return result

    def _measure_latency(
        self, result: LatencyResult, noop: Any, fleet: Fleet, procs: Sequence[Proc]
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
                result.problem = f"{', '.join(dead)} exited\n{self.log_tails(procs)}"
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
        self._latency_parts(result, fleet, run_ids, run_ms)

    @staticmethod
    def _latency_parts(
        result: LatencyResult, fleet: Fleet, run_ids: Sequence[str], run_ms: Sequence[float]
    ) -> None:
        # Where a run's round trip goes, from the worker's own timestamps: queued until the
        # step starts, the step itself (LLM call included), then until the caller has it.
        queue, step, back = [], [], []
        for run_id, total in zip(run_ids, run_ms, strict=True):
            record = fleet.store.get_run(run_id) or {}
            if not {"created_at", "started_at", "finished_at"} <= record.keys():
                continue
            created, started = float(record["created_at"]), float(record["started_at"])
            finished = float(record["finished_at"])
            queue.append((started - created) * 1000)
            step.append((finished - started) * 1000)
            back.append(total - (finished - created) * 1000)
        result.run_queue_p50_ms = percentile(queue, 50)
        result.run_step_p50_ms = percentile(step, 50)
        result.run_result_p50_ms = percentile(back, 50)

    # --- (b) throughput ----------------------------------------------------------------------
    def throughput(self) -> list[DrainResult]:
        """Section (b): a backlog of M items enqueued first, then drained on the same cores.

        The first row is the baseline; the second, stock Celery making one openai SDK call
        per task, is the floor of an LLM step on this machine (see :mod:`ops.bench_plain`).
        """
        results = [self._drain_plain(), self._drain_plain(llm=True)]
        for agents in THROUGHPUT_POOLS:
            if agents.pool in self.families:
                results.append(self._drain_runs(agents))
        return results

    def _drain_plain(self, llm: bool = False) -> DrainResult:
        """Stock Celery's no-op tasks, or with ``llm`` its one-SDK-call tasks (the floor)."""
        url = self.fresh_db()
        app = plain_producer(url)
        client = redis.Redis.from_url(url)
        if llm:
            step = app.tasks[bench_plain.LLM_STEP]
            messages = [{"role": "user", "content": ONE_STEP_PROMPT}]
            result = DrainResult(f"{PLAIN_LLM} prefork 1x2", self.sizes.backlog_m)
            submit = lambda: str(step.apply_async((messages,)).id)  # noqa: E731
        else:
            noop = bench_plain.noop_task(app)
            result = DrainResult("plain Celery prefork 1x2", self.sizes.backlog_m)
            submit = lambda: str(noop.apply_async().id)  # noqa: E731
        try:
            self._drain(
                result,
                submit=submit,
                probe=plain_probe(app, client),
                ok="SUCCESS",
                start_workers=lambda: [self.start_plain(url)],
            )
        finally:
            app.close()
            client.close()
        return result

    def _drain_runs(self, agents: AgentsPool) -> DrainResult:
        fleet = Fleet.connect(self.fresh_db())
        result = DrainResult(f"agentfleet {agents.label}", self.sizes.backlog_m)
        try:
            self._drain(
                result,
                submit=lambda: fleet.submit(ONE_STEP_PROMPT),
                probe=run_probe(fleet.store),
                ok="succeeded",
                start_workers=lambda: self.start_agents(fleet.settings.redis_url, agents),
            )
        finally:
            fleet.close()
        return result

    def _drain(
        self,
        result: DrainResult,
        submit: Callable[[], str],
        probe: Probe,
        ok: str,
        start_workers: Callable[[], list[Proc]],
    ) -> None:
        """Enqueue the backlog, then start the workers and time them draining it."""
        try:
            ids, seconds = enqueue_many(submit, result.items, 300)
            result.enqueue_per_s = result.items / seconds
            tracker = Tracker(ids, probe)
            # Worker start-up, then no slower than 20 items/s: far below any healthy rate.
            deadline = time.monotonic() + 60 + result.items / 20
            with self.workers([]) as procs:
                spawned = time.time()
                procs.extend(start_workers())
                # CPU is counted from the first completion, like drain/s, so that the
                # workers' start-up (imports, forks) is not charged to the items.
                meter = self.meter({"workers": procs})
                result.problem = tracker.wait(deadline, procs, on_first=meter.start)
                result.cpu_s, result.busy_pct = meter.stop(), meter.busy_pct
                if result.problem:
                    result.problem += "\n" + self.log_tails(procs)
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
        if counted > 0 and "workers" in result.cpu_s:
            result.cpu_ms_per_item = result.cpu_s["workers"] * 1000 / counted

    # --- (c) concurrency ---------------------------------------------------------------------
    def concurrency(self) -> list[ConcurrencyResult]:
        """Section (c): two-step runs at 2 s of LLM latency through each ``agents`` pool.

        With the threads pool, the same calls on stock Celery first: the floor of what they
        cost on this machine (see :mod:`ops.bench_plain`).
        """
        results = []
        if FLEET_AGENTS_POOL in self.families:
            results.append(self._concurrency_plain(PLAIN_CONCURRENCY_POOL, self.sizes.runs_r))
        results.extend(
            self._concurrency_one(agents, runs)
            for agents, runs in concurrency_configs(self.sizes)
            if agents.pool in self.families
        )
        return results

    def _concurrency_plain(self, agents: AgentsPool, runs: int) -> ConcurrencyResult:
        url = self.fresh_db()
        app = plain_producer(url)
        client = redis.Redis.from_url(url)
        result = ConcurrencyResult(f"{PLAIN_LLM} {agents.label}", runs)
        procs: list[Proc] = []
        try:
            with self.workers(procs):
                for _ in range(agents.processes):
                    procs.append(self.start_plain(url, agents.pool, agents.concurrency))
                procs.append(self.start_plain(url, queue=bench_plain.TOOLS_QUEUE))
                self.stack.wait_workers(app, len(procs), timeout=120)
                # Warm up like agentfleet's workers: clients, connections, pool children.
                warm = [
                    bench_plain.agent_run(app, WARM_TWO_STEP_PROMPT).apply_async()
                    for _ in range(min(2 * agents.slots, 200))
                ]
                for started in warm:
                    started.get(timeout=120)
                self.simulator_stats(reset=True)
                meter = self.meter({"agents": procs[:-1], "tools": procs[-1:]})
                meter.start()
                self._drive_runs(
                    result,
                    lambda: str(bench_plain.agent_run(app, TWO_STEP_PROMPT).apply_async().id),
                    plain_probe(app, client),
                    "SUCCESS",
                    agents.slots,
                    procs,
                )
                result.cpu_s, result.busy_pct = meter.stop(), meter.busy_pct
                result.max_llm_in_flight = int(self.simulator_stats()["max_in_flight"])
        except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
            result.problem = f"{type(exc).__name__}: {exc}\n{self.log_tails(procs)}"
        finally:
            app.close()
            client.close()
        return result

    def _concurrency_one(self, agents: AgentsPool, runs: int) -> ConcurrencyResult:
        fleet = Fleet.connect(self.fresh_db())
        result = ConcurrencyResult(agents.label, runs)
        url = fleet.settings.redis_url
        procs: list[Proc] = []
        try:
            with self.workers(procs):
                agents_procs = self.start_agents(url, agents)
                tools = self.start_tools(url)
                procs.extend([*agents_procs, tools])
                self.stack.wait_workers(fleet.app, agents.processes + 1, timeout=120)
                # Every process builds its clients and opens connections before the clock runs.
                warm = min(2 * agents.slots, 200)
                self.wait_runs(fleet, WARM_TWO_STEP_PROMPT, warm, procs, timeout=120)
                self.simulator_stats(reset=True)
                meter = self.meter({"agents": agents_procs, "tools": [tools]})
                meter.start()
                self._measure_concurrency(result, fleet, agents, agents_procs, procs)
                result.cpu_s, result.busy_pct = meter.stop(), meter.busy_pct
                result.max_llm_in_flight = int(self.simulator_stats()["max_in_flight"])
        except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
            result.problem = f"{type(exc).__name__}: {exc}\n{self.log_tails(procs)}"
        finally:
            fleet.close()
        return result

    def _drive_runs(
        self,
        result: ConcurrencyResult,
        submit: Callable[[], str],
        probe: Probe,
        ok: str,
        slots: int,
        procs: Sequence[Proc],
    ) -> list[Finished]:
        """Enqueue ``result.runs`` runs, wait for them, and score the wall and concurrency."""
        # Generous: the waves the slots allow, at twice their ideal length, plus time to
        # enqueue and for per-task overhead.
        waves = math.ceil(result.runs / slots)
        deadline = time.monotonic() + 120 + waves * 4 * SLOW_LLM_S + result.runs * 0.05
        first_enqueue = time.time()
        ids, result.enqueue_s = enqueue_many(submit, result.runs, 300)
        tracker = Tracker(ids, probe)
        problem = tracker.wait(deadline, procs)
        if problem:
            result.problem = f"{problem}\n{self.log_tails(procs)}"
        finished = tracker.succeeded(ok)
        result.done, result.failed = len(finished), len(tracker.finished) - len(finished)
        if finished:
            result.wall_s = finished[-1].at - first_enqueue
            result.effective_concurrency = result.done * 2 * SLOW_LLM_S / result.wall_s
        return finished

    def _measure_concurrency(
        self,
        result: ConcurrencyResult,
        fleet: Fleet,
        agents: AgentsPool,
        agents_procs: Sequence[Proc],
        procs: Sequence[Proc],
    ) -> None:
        retries_before = [len(retry_countdowns(p)) for p in agents_procs]
        finished = self._drive_runs(
            result,
            lambda: fleet.submit(TWO_STEP_PROMPT),
            run_probe(fleet.store),
            "succeeded",
            agents.slots,
            procs,
        )
        retries = [
            countdown
            for proc, before in zip(agents_procs, retries_before, strict=True)
            for countdown in retry_countdowns(proc)[before:]
        ]
        result.step_retries = len(retries)
        result.longest_retry_s = max(retries, default=math.nan)
        if finished:
            took = [f.took for f in finished]
            result.run_p50_s, result.run_max_s = percentile(took, 50), max(took)

    # --- (d) accept ----------------------------------------------------------------------------
    def accept(self) -> list[AcceptResult]:
        """Section (d): runs accepted per second by each path, with no worker running."""
        results = [self._accept_apply_async(), self._accept_in_process()]
        results.extend(self._accept_http(processes) for processes in (1, 2))
        return results

    def _accept_apply_async(self) -> AcceptResult:
        fleet = Fleet.connect(self.fresh_db())
        entry = fleet.app.tasks[names.RUN]
        result = AcceptResult("Celery apply_async(agentfleet.run)", self.sizes.accept_n, 0)
        try:
            payload = {"request": {"input": ONE_STEP_PROMPT}}
            self._accept(result, fleet, lambda: str(entry.apply_async(kwargs=payload).id), [])
        finally:
            fleet.close()
        return result

    def _accept_in_process(self) -> AcceptResult:
        fleet = Fleet.connect(self.fresh_db())
        result = AcceptResult("submit_run in process", self.sizes.accept_n, 0)
        try:
            self._accept(result, fleet, lambda: fleet.submit(ONE_STEP_PROMPT), [])
        finally:
            fleet.close()
        return result

    def _accept_http(self, processes: int) -> AcceptResult:
        fleet = Fleet.connect(self.fresh_db())
        result = AcceptResult(f"POST /v1/runs, uvicorn x{processes}", self.sizes.accept_n, 0)
        try:
            with self.workers([]) as procs:
                api, base_url = self.start_api(fleet.settings.redis_url, processes)
                procs.append(api)
                key = create_key(fleet.store.redis, fleet.settings, "bench")
                submitter = HttpSubmitter(base_url, key)
                try:
                    self._accept(result, fleet, submitter, [api])
                finally:
                    submitter.close()
        except (StackError, OSError) as exc:
            result.problem = f"{type(exc).__name__}: {exc}"
        finally:
            fleet.close()
        return result

    def _accept(
        self, result: AcceptResult, fleet: Fleet, submit: Callable[[], str], server: list[Proc]
    ) -> None:
        result.clients = ENQUEUE_THREADS
        queue = fleet.store.redis
        try:
            # Warm-up: connections, the API's worker processes, first-call caches.
            timed_calls(submit, 200, ENQUEUE_THREADS, 120)
            before = int(queue.llen("agents"))
            meter = self.meter({"server": server})
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

    def start_api(self, url: str, processes: int) -> tuple[Proc, str]:
        """The producer API on database ``url`` with ``processes`` uvicorn workers."""
        port = free_port()
        argv = [
            sys.executable, "-m", "uvicorn", "agentfleet.producer.api:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--workers", str(processes),
        ]  # fmt: skip
        env = {**self.stack.env(), "AGENTFLEET_REDIS_URL": url}
        proc = self.stack.spawn(f"api-{port}", argv, env)
        base_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base_url}/healthz").status_code == 200, 60, "the API")
        return proc, base_url

    # --- (e) chord -----------------------------------------------------------------------------
    def chord(self) -> list[ChordResult]:
        """Section (e): a plain chord of 100 no-ops, then a run fanning out 100 tool calls."""
        return [self._chord_plain(), self._chord_runs()]

    def _chord_plain(self) -> ChordResult:
        url = self.fresh_db()
        app = plain_producer(url)
        noop, collect = bench_plain.noop_task(app), bench_plain.collect_task(app)
        result = ChordResult(
            f"plain Celery chord, {CHORD_SIZE} no-ops + body, prefork 1x2",
            CHORD_SIZE,
            self.sizes.chord_reps,
        )

        def once() -> float:
            start = time.perf_counter()
            header = [noop.s() for _ in range(CHORD_SIZE)]
            count = canvas.chord(header)(collect.s()).get(timeout=120)
            if count != CHORD_SIZE:
                raise StackError(f"the chord body saw {count} of {CHORD_SIZE} results")
            return time.perf_counter() - start

        try:
            with self.workers([self.start_plain(url)]):
                self.stack.wait_workers(app, 1)
                once()  # warm-up: pool children, connections
                walls = [once() for _ in range(result.reps)]
            self._chord_walls(result, walls)
        except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
            result.problem = f"{type(exc).__name__}: {exc}"
        finally:
            app.close()
        return result

    def _chord_runs(self) -> ChordResult:
        fleet = Fleet.connect(self.fresh_db())
        result = ChordResult(
            f"agentfleet run, {CHORD_SIZE} tool calls, tools prefork "
            f"1x{TOOLS_POOL.concurrency}, agents {CHORD_AGENTS.label}",
            CHORD_SIZE,
            self.sizes.chord_reps,
        )
        url = fleet.settings.redis_url
        procs: list[Proc] = []
        try:
            with self.workers(procs):
                procs.extend([*self.start_agents(url, CHORD_AGENTS), self.start_tools(url)])
                self.stack.wait_workers(fleet.app, CHORD_AGENTS.processes + 1)
                self._chord_run_once(fleet)  # warm-up
                parts = [self._chord_run_once(fleet) for _ in range(result.reps)]
            self._chord_walls(result, [p[0] for p in parts])
            result.before_tools_p50_s = percentile([p[1] for p in parts], 50)
            result.tools_p50_s = percentile([p[2] for p in parts], 50)
            result.after_tools_p50_s = percentile([p[3] for p in parts], 50)
        except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
            result.problem = f"{type(exc).__name__}: {exc}\n{self.log_tails(procs)}"
        finally:
            fleet.close()
        return result

    @staticmethod
    def _chord_run_once(fleet: Fleet) -> tuple[float, float, float, float]:
        """One run of :data:`CHORD_PROMPT`: wall, then before / during / after its tools."""
        start = time.perf_counter()
        run_id = fleet.submit(CHORD_PROMPT)
        final = fleet.app.AsyncResult(run_id).get(timeout=120)
        wall = time.perf_counter() - start
        if final["status"] != "succeeded" or final["progress"]["tool_calls_done"] != CHORD_SIZE:
            raise StackError(f"run {run_id}: {final['status']}, {final['progress']}")
        record = fleet.store.get_run(run_id) or {}
        pipe = fleet.store.redis.pipeline(transaction=False)
        for index in range(CHORD_SIZE):
            pipe.hmget(fleet.store.tool_key(f"{run_id}-1-{index}"), "started_at", "finished_at")
        times = pipe.execute()
        first = min(float(started) for started, _ in times)
        last = max(float(finished) for _, finished in times)
        created, finished = float(record["created_at"]), float(record["finished_at"])
        return wall, first - created, last - first, finished - last

    @staticmethod
    def _chord_walls(result: ChordResult, walls: Sequence[float]) -> None:
        result.done = len(walls)
        result.wall_p50_s = percentile(walls, 50)
        result.wall_min_s, result.wall_max_s = min(walls), max(walls)

    # --- (f) memory ----------------------------------------------------------------------------
    def memory(self) -> list[MemoryResult]:
        """Section (f): memory per run parked on a slow LLM call, for each number of runs."""
        return [row for runs in self.sizes.park_runs for row in self._memory_one(runs)]

    def _memory_one(self, runs: int) -> list[MemoryResult]:
        fleet = Fleet.connect(self.fresh_db())
        rows = [MemoryResult(PARK_AGENTS.label, runs, phase) for phase in ("first", "again")]
        url = fleet.settings.redis_url
        procs: list[Proc] = []
        try:
            with self.workers(procs):
                agents = self.start_agents(url, PARK_AGENTS)
                procs.extend(agents)
                self.stack.wait_workers(fleet.app, PARK_AGENTS.processes, timeout=120)
                self.wait_runs(fleet, ONE_STEP_PROMPT, 20, procs, timeout=60)
                for row in rows:
                    self._park(row, fleet, agents)
        except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
            for row in rows:
                row.problem = row.problem or f"{type(exc).__name__}: {exc}"
            rows[-1].problem += f"\n{self.log_tails(procs)}"
        finally:
            fleet.close()
        return rows

    def _park(self, row: MemoryResult, fleet: Fleet, agents: Sequence[Proc]) -> None:
        client = fleet.store.redis

        def rss() -> int:
            return sum(group_rss_bytes(p.popen.pid) for p in agents)

        settle(client)
        redis_before, rss_before = steady_used_memory(client, 30), rss()
        keys_before = keys_memory(client)
        ids, _ = enqueue_many(lambda: fleet.submit(PARK_PROMPT), row.runs, 120)

        def parked() -> bool:
            row.in_flight = int(self.simulator_stats()["in_flight"])
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
            base = fleet.store.run_key(run_id)
            for key in (base, f"{base}:messages", f"{base}:lease"):
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


# --- output ------------------------------------------------------------------------------------
def fmt(value: object, digits: int = 1) -> str:
    """A table cell: floats rounded, NaN as a dash."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:,.{digits}f}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with a title line."""
    cells = [list(headers), *[[fmt(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [title, ""]
    for index, row in enumerate(cells):
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when either is missing or the denominator is 0."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def verdict(met: bool) -> str:
    """How a table says whether a target is met."""
    return "met" if met else "NOT met"


def cpu_cell(cpu: dict[str, float], name: str) -> float:
    """CPU seconds of ``name`` in a result, NaN when it was not measured."""
    return cpu.get(name, math.nan)


def report_latency(results: Sequence[LatencyResult]) -> str:
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


def report_throughput(results: Sequence[DrainResult]) -> str:
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
            r.busy_pct,
            cpu_cell(r.cpu_s, "workers"),
            cpu_cell(r.cpu_s, "redis"),
            cpu_cell(r.cpu_s, "sim"),
            cpu_cell(r.cpu_s, "bench"),
        ]
        for r in results
    ]
    headers = [
        "configuration", "items", "enq/s", "drain/s", "incl. boot/s", "vs plain", "ok/failed",
        "worker cpu ms/item", "busy %", "cpu workers", "cpu redis", "cpu sim", "cpu bench",
    ]  # fmt: skip
    text = table(
        "(b) throughput: backlog enqueued with no worker running, then drained on "
        f"{os.cpu_count()} cores\n"
        "    drain/s = (done - 1) / (last - first completion); incl. boot/s = done / (last "
        "completion - worker spawn)\n    agentfleet items are one-step runs (1 agent step "
        "each); the simulator and Redis share the same cores\n    CPU in seconds from the first "
        "completion to the last (worker start-up excluded); busy % = share of all cores busy",
        headers,
        rows,
    )
    ours = [r for r in results[1:] if not r.config.startswith(PLAIN_LLM)]
    best = max((ratio(r.drain_per_s, plain) for r in ours), default=math.nan)
    if not math.isnan(best):
        met = verdict(best >= TARGET_THROUGHPUT_RATIO)
        text += f"\n\nbest steps/s vs plain tasks/s: {best:.2f} (target >= "
        text += f"{TARGET_THROUGHPUT_RATIO:g}: {met})"
    return text


def report_concurrency(results: Sequence[ConcurrencyResult]) -> str:
    """Section (c) as text."""
    rows = [
        [
            r.config,
            r.runs,
            r.enqueue_s,
            r.wall_s,
            r.effective_concurrency,
            r.max_llm_in_flight,
            r.run_p50_s,
            r.run_max_s,
            r.step_retries,
            r.longest_retry_s,
            f"{r.done}/{r.failed}",
            r.busy_pct,
            cpu_cell(r.cpu_s, "agents"),
            cpu_cell(r.cpu_s, "tools"),
            cpu_cell(r.cpu_s, "redis"),
            cpu_cell(r.cpu_s, "sim"),
            cpu_cell(r.cpu_s, "bench"),
        ]
        for r in results
    ]
    headers = [
        "agents pool", "runs", "enqueue s", "wall s", "eff. conc.", "max LLM in flight",
        "run p50 s", "run max s", "step retries", "longest retry s", "ok/failed", "busy %",
        "cpu agents", "cpu tools", "cpu redis", "cpu sim", "cpu bench",
    ]  # fmt: skip
    text = table(
        f"(c) concurrency: 2-step runs at {SLOW_LLM_S:g} s per LLM call, tools prefork "
        f"1x{TOOLS_POOL.concurrency}\n    wall = first enqueue to last completion; eff. conc. "
        f"= runs x 2 x {SLOW_LLM_S:g} s / wall; enqueue ({ENQUEUE_THREADS} threads) shares "
        f"the {os.cpu_count()} cores\n    CPU in seconds from the first enqueue to the last "
        "completion; busy % = share of all cores busy",
        headers,
        rows,
    )
    scored = [
        r
        for r in results
        if not math.isnan(r.effective_concurrency) and not r.config.startswith(PLAIN_LLM)
    ]
    if scored:
        best = max(scored, key=lambda r: r.effective_concurrency)
        met = verdict(best.effective_concurrency >= TARGET_CONCURRENCY)
        text += f"\n\nbest: {best.config}, effective concurrency "
        text += f"{best.effective_concurrency:,.0f} (target >= {TARGET_CONCURRENCY:g}: {met})"
    return text


def per_item_ms(cpu: dict[str, float], name: str, items: int) -> float:
    """CPU milliseconds of ``name`` per item; NaN when it was not measured."""
    return cpu_cell(cpu, name) * 1000 / items if items else math.nan


def report_accept(results: Sequence[AcceptResult]) -> str:
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


def report_chord(results: Sequence[ChordResult]) -> str:
    """Section (e) as text."""
    base = results[0].wall_p50_s if results else math.nan
    rows = [
        [
            r.config,
            r.reps,
            r.wall_p50_s,
            r.wall_min_s,
            r.wall_max_s,
            ratio(r.wall_p50_s, base),
            r.wall_p50_s * 1000 / r.size,
            r.before_tools_p50_s,
            r.tools_p50_s,
            r.after_tools_p50_s,
        ]
        for r in results
    ]
    headers = [
        "configuration", "chords", "p50 s", "min s", "max s", "vs plain", "ms per header task",
        "before tools p50 s", "tools p50 s", "after tools p50 s",
    ]  # fmt: skip
    return table(
        f"(e) chord of {CHORD_SIZE}: one chord at a time, apply to the body's result; the "
        f"run is submit_run of a prompt\n    asking for {CHORD_SIZE} text_stats calls "
        "(zero-latency simulator), to AsyncResult(run_id).get()\n    before tools = created "
        "to the first tool start (step 1 and publishing the chord); tools = first tool\n    "
        "start to last tool end; after tools = to the run's end (the chord's join and step 2)",
        headers,
        [[fmt(v, 3) if isinstance(v, float) else v for v in row] for row in rows],
    )


def report_memory(results: Sequence[MemoryResult]) -> str:
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


def json_safe(value: Any) -> Any:
    """``value`` with NaN (a number not measured) as null, which strict JSON readers accept."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def report_problems(name: str, results: Sequence[Any]) -> str:
    """The problems of a section's configurations, with their log tails."""
    lines = [f"{name} {r.config}: {r.problem}" for r in results if r.problem]
    return "\n\n".join(lines)


# --- command line ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m ops.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run, e.g. a,d")
    parser.add_argument(
        "--pools", default="gevent,threads,prefork", help="agents pool families to measure"
    )
    parser.add_argument(
        "--appendfsync",
        choices=("no", "everysec", "always"),
        default="no",
        help="the bench's Redis keeps an append-only file fsynced so (no: no file)",
    )
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    args.pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    if unknown := set(args.only) - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if unknown := set(args.pools) - set(LATENCY_POOLS):
        parser.error(f"unknown pools: {', '.join(sorted(unknown))}")
    return args


def raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one; the workers inherit it.

    A worker with 1,000 greenlets holds an HTTP and a Redis connection per greenlet, and the
    simulator one socket per call in flight: far more than a default soft limit of 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def progress(message: str) -> None:
    """A progress line on stderr, so stdout holds only the tables."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_sections(bench: Bench, only: Sequence[str]) -> dict[str, Any]:
    """Run the sections asked for, printing each table as soon as it is measured."""
    sections: list[tuple[str, str, Callable[[], Sequence[Any]], Callable[[Any], str]]] = [
        ("a", "latency", bench.latency, report_latency),
        ("b", "throughput", bench.throughput, report_throughput),
        ("c", "concurrency", bench.concurrency, report_concurrency),
        ("d", "accept", bench.accept, report_accept),
        ("e", "chord", bench.chord, report_chord),
        ("f", "memory", bench.memory, report_memory),
    ]
    numbers: dict[str, Any] = {}
    for key, name, measure, report in sections:
        if key not in only:
            continue
        progress(f"({key}) {name}")
        rows = measure()
        numbers[name] = [asdict(r) for r in rows]
        print(report(rows), end="\n\n", flush=True)
        if problems := report_problems(f"({key})", rows):
            print(problems, end="\n\n", flush=True)
    return numbers


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; 0 when every configuration finished without a problem."""
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="agentfleet-bench-"))
    started = time.monotonic()
    progress(f"sizes {sizes}; appendfsync {args.appendfsync}; logs in {workdir}")
    with Stack(workdir) as stack:
        bench = Bench(stack, sizes, args.pools, args.appendfsync)
        bench.start()
        numbers = run_sections(bench, args.only)
    wall = time.monotonic() - started
    print(f"bench wall time: {wall:.0f} s ({'quick' if args.quick else 'full'}); logs in {workdir}")
    if args.json:
        document = {
            "sizes": asdict(sizes),
            "pools": args.pools,
            "appendfsync": args.appendfsync,
            "wall_s": wall,
            **numbers,
        }
        args.json.write_text(json.dumps(json_safe(document), indent=2) + "\n")
    failed = [r for section in numbers.values() for r in section if r.get("problem")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
