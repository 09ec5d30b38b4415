"""Section (e), chord: a run fanning out 100 tool calls against a plain chord of 100."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from celery import canvas

from ops import bench_plain
from ops.bench._common import (
    FLEET_AGENTS_POOL,
    TOOLS_POOL,
    AgentsPool,
    fmt,
    percentile,
    ratio,
    table,
)
from ops.bench._stack import Bench, Fleet, plain_producer
from ops.stack import Proc, StackError

#: Section (e): tool calls the model asks for in one turn, so the chord's header size.
CHORD_SIZE = 100
CHORD_PROMPT = " ".join(['call text_stats {"text": "x"}'] * CHORD_SIZE)

#: Sections (e) and (f): the fleet's own ``agents`` pool (threads, chosen by section c), one
#: process for (e), whose two LLM steps per run are not what it measures.
CHORD_AGENTS = AgentsPool(FLEET_AGENTS_POOL, 100)


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


def measure(bench: Bench) -> list[ChordResult]:
    """Section (e): a plain chord of 100 no-ops, then a run fanning out 100 tool calls."""
    return [_chord_plain(bench), _chord_runs(bench)]


def _chord_plain(bench: Bench) -> ChordResult:
    url = bench.fresh_db()
    app = plain_producer(url)
    noop, collect = bench_plain.noop_task(app), bench_plain.collect_task(app)
    result = ChordResult(
        f"plain Celery chord, {CHORD_SIZE} no-ops + body, prefork 1x2",
        CHORD_SIZE,
        bench.sizes.chord_reps,
    )

    def once() -> float:
        start = time.perf_counter()
        header = [noop.s() for _ in range(CHORD_SIZE)]
        count = canvas.chord(header)(collect.s()).get(timeout=120)
        if count != CHORD_SIZE:
            raise StackError(f"the chord body saw {count} of {CHORD_SIZE} results")
        return time.perf_counter() - start

    try:
        with bench.workers([bench.start_plain(url)]):
            bench.stack.wait_workers(app, 1)
            once()  # warm-up: pool children, connections
            walls = [once() for _ in range(result.reps)]
        _chord_walls(result, walls)
    except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
        result.problem = f"{type(exc).__name__}: {exc}"
    finally:
        app.close()
    return result


def _chord_runs(bench: Bench) -> ChordResult:
    fleet = Fleet.connect(bench.fresh_db())
    result = ChordResult(
        f"agentfleet run, {CHORD_SIZE} tool calls, tools prefork "
        f"1x{TOOLS_POOL.concurrency}, agents {CHORD_AGENTS.label}",
        CHORD_SIZE,
        bench.sizes.chord_reps,
    )
    url = fleet.settings.redis.redis_url
    procs: list[Proc] = []
    try:
        with bench.workers(procs):
            procs.extend([*bench.start_agents(url, CHORD_AGENTS), bench.start_tools(url)])
            bench.stack.wait_workers(fleet.app, CHORD_AGENTS.processes + 1)
            _chord_run_once(fleet)  # warm-up
            parts = [_chord_run_once(fleet) for _ in range(result.reps)]
        _chord_walls(result, [p[0] for p in parts])
        result.before_tools_p50_s = percentile([p[1] for p in parts], 50)
        result.tools_p50_s = percentile([p[2] for p in parts], 50)
        result.after_tools_p50_s = percentile([p[3] for p in parts], 50)
    except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
        result.problem = f"{type(exc).__name__}: {exc}\n{bench.log_tails(procs)}"
    finally:
        fleet.close()
    return result


def _chord_run_once(fleet: Fleet) -> tuple[float, float, float, float]:
    """One run of :data:`CHORD_PROMPT`: wall, then before / during / after its tools."""
    start = time.perf_counter()
    run_id = fleet.submit(CHORD_PROMPT)
    final = fleet.app.AsyncResult(run_id).get(timeout=120)
    wall = time.perf_counter() - start
    if final["status"] != "succeeded" or final["progress"]["tool_calls_done"] != CHORD_SIZE:
        raise StackError(f"run {run_id}: {final['status']}, {final['progress']}")
    record = fleet.store.get_run(run_id)
    if record is None or record.finished_at is None:
        raise StackError(f"run {run_id}: no final record")
    pipe = fleet.store.redis.pipeline(transaction=False)
    for index in range(CHORD_SIZE):
        pipe.hmget(fleet.store.tool_key(f"{run_id}-1-{index}"), "started_at", "finished_at")
    times = pipe.execute()
    first = min(float(started) for started, _ in times)
    last = max(float(finished) for _, finished in times)
    created, finished = record.created_at, record.finished_at
    return wall, first - created, last - first, finished - last


def _chord_walls(result: ChordResult, walls: Sequence[float]) -> None:
    result.done = len(walls)
    result.wall_p50_s = percentile(walls, 50)
    result.wall_min_s, result.wall_max_s = min(walls), max(walls)


def report(results: Sequence[ChordResult]) -> str:
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
