"""Measuring: CPU per process group, items followed to their end, many enqueued at once."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import NamedTuple

import redis
from celery import Celery

from agentfleet.tasks.store import RunStore
from ops.bench._common import ENQUEUE_THREADS
from ops.stack import Proc

_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def group_processes(pgid: int) -> Iterator[tuple[str, list[str]]]:
    """``(pid, the fields of its /proc stat after the command name)`` of every process in the
    process group ``pgid``.

    Workers are spawned in their own session, so a prefork worker and its children share the
    group.
    """
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
            yield entry.name, fields


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) of every process in a process group; the reaped-children
    fields count children that already exited."""
    # utime stime cutime cstime
    ticks = sum(int(value) for _, fields in group_processes(pgid) for value in fields[11:15])
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


def enqueue_many(submit: Callable[[], str], count: int, timeout: float) -> tuple[list[str], float]:
    """Call ``submit`` ``count`` times from a thread pool; the IDs in order and the seconds."""
    start = time.perf_counter()
    with ThreadPoolExecutor(ENQUEUE_THREADS, thread_name_prefix="enqueue") as pool:
        ids = list(pool.map(lambda _: submit(), range(count), timeout=timeout))
    return ids, time.perf_counter() - start
