"""Section (c), concurrency: two-step runs at 2 s of LLM latency through each pool."""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import redis

from ops import bench_plain
from ops.bench._common import (
    ENQUEUE_THREADS,
    FLEET_AGENTS_POOL,
    PLAIN_LLM,
    TOOLS_POOL,
    WARM_TWO_STEP_PROMPT,
    AgentsPool,
    Sizes,
    cpu_cell,
    fleet_cpu_s,
    ms_per,
    percentile,
    ratio,
    table,
    verdict,
)
from ops.bench._meters import Finished, Probe, Tracker, enqueue_many, plain_probe, run_probe
from ops.bench._stack import Bench, Fleet, Submission, plain_producer
from ops.bench.throughput import CPU_COLUMNS
from ops.stack import Proc, StackError

#: Seconds the simulator waits on each LLM call of section (c).
SLOW_LLM_S = 2.0
#: Step 1 asks for one ``text_stats`` call (a fast tool); step 2 answers from its result.
TWO_STEP_PROMPT = f'call text_stats {{"text": "x"}} [[latency:{SLOW_LLM_S:g}]]'
#: The targets, against the floor (stock Celery making the same calls with the SDK's default
#: client) in the same bench run: the best pool's effective concurrency at least this many
#: times the floor's, with its own CPU per run at most this many times the floor's.
TARGET_VS_FLOOR = 1.3
TARGET_CPU_VS_FLOOR = 0.9

#: What Celery logs when a task is put back with a countdown: ``... retry: Retry in 1.2s``.
RETRY_LOG_LINE = re.compile(r" retry: Retry in (\d+(?:\.\d+)?)s")

#: Section (c): the pool the floor runs its LLM calls on, the fleet's own at its size.
PLAIN_CONCURRENCY_POOL = AgentsPool(FLEET_AGENTS_POOL, 500, 2)
#: The floor's LLM transports: the SDK's default, then the best stock setup (aiohttp).
FLOOR_TRANSPORTS = ("", "aiohttp")


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
    #: CPU seconds per process group from the first enqueue to the last completion: the
    #: ``agents``, ``tools`` and (the fleet's) ``batch`` workers, the API (``api``, when runs
    #: are submitted through it), ``redis``, ``sim`` and the load generator (``bench``).
    cpu_s: dict[str, float] = field(default_factory=dict)
    #: The configuration's own CPU per run: workers, API and Redis (``FLEET_CPU``).
    fleet_ms_per_run: float = math.nan
    #: LLM requests the simulator answered in the window, and its CPU per request.
    sim_requests: int = 0
    sim_ms_per_request: float = math.nan
    #: Percent of the machine's cores busy from the first enqueue to the last completion.
    busy_pct: float = math.nan
    problem: str = ""

    def account(self, cpu_s: dict[str, float], sim_requests: int) -> None:
        """Keep the window's CPU, and what it comes to per run and per LLM request."""
        self.cpu_s, self.sim_requests = cpu_s, sim_requests
        self.fleet_ms_per_run = ms_per(fleet_cpu_s(cpu_s), self.done)
        self.sim_ms_per_request = ms_per(cpu_cell(cpu_s, "sim"), sim_requests)


def retry_countdowns(proc: Proc) -> list[float]:
    """The countdown of every retry a worker logged, in log order."""
    with contextlib.suppress(OSError), proc.log.open(errors="replace") as log:
        return [float(m[1]) for line in log if (m := RETRY_LOG_LINE.search(line))]
    return []


def measure(bench: Bench) -> list[ConcurrencyResult]:
    """Section (c): two-step runs at 2 s of LLM latency through each ``agents`` pool.

    With the threads pool, the same calls on stock Celery first: the floor of what they
    cost on this machine (see :mod:`ops.bench_plain`), on the SDK's default client and on
    an aiohttp event loop.
    """
    results: list[ConcurrencyResult] = []
    if FLEET_AGENTS_POOL in bench.families:
        results.extend(
            _concurrency_plain(
                bench, replace(PLAIN_CONCURRENCY_POOL, transport=t), bench.sizes.runs_r
            )
            for t in FLOOR_TRANSPORTS
        )
    results.extend(
        _concurrency_one(bench, agents, runs)
        for config, runs in concurrency_configs(bench.sizes)
        for agents in bench.on_each_transport([config])
        if agents.pool in bench.families
    )
    return results


def _concurrency_plain(bench: Bench, agents: AgentsPool, runs: int) -> ConcurrencyResult:
    url = bench.fresh_db()
    app = plain_producer(url)
    client = redis.Redis.from_url(url)
    result = ConcurrencyResult(f"{PLAIN_LLM} {agents.label}", runs)
    procs: list[Proc] = []
    try:
        with bench.workers(procs):
            for _ in range(agents.processes):
                procs.append(
                    bench.start_plain(
                        url, agents.pool, agents.concurrency, transport=agents.transport
                    )
                )
            procs.append(bench.start_plain(url, queue=bench_plain.TOOLS_QUEUE))
            bench.stack.wait_workers(app, len(procs), timeout=120)
            # Warm up like agentfleet's workers: clients, connections, pool children.
            warm = [
                bench_plain.agent_run(app, WARM_TWO_STEP_PROMPT).apply_async()
                for _ in range(min(2 * agents.slots, 200))
            ]
            for started in warm:
                started.get(timeout=120)
            bench.simulator_stats(reset=True)
            meter = bench.meter({"agents": procs[:-1], "tools": procs[-1:]})
            meter.start()
            _drive_runs(
                bench,
                result,
                lambda: str(bench_plain.agent_run(app, TWO_STEP_PROMPT).apply_async().id),
                plain_probe(app, client),
                "SUCCESS",
                agents.slots,
                procs,
            )
            cpu_s, result.busy_pct = meter.stop(), meter.busy_pct
            stats = bench.simulator_stats()
            result.max_llm_in_flight = int(stats["max_in_flight"])
            result.account(cpu_s, int(stats["requests"]))
    except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
        result.problem = f"{type(exc).__name__}: {exc}\n{bench.log_tails(procs)}"
    finally:
        app.close()
        client.close()
    return result


def _concurrency_one(bench: Bench, agents: AgentsPool, runs: int) -> ConcurrencyResult:
    fleet = Fleet.connect(bench.fresh_db())
    result = ConcurrencyResult(agents.label, runs)
    url = fleet.settings.redis.redis_url
    procs: list[Proc] = []
    try:
        with bench.workers(procs), bench.submission(fleet, procs) as submission:
            agents_procs = bench.start_agents(url, agents)
            tools, batch = bench.start_tools(url), bench.start_batch(url)
            procs.extend([*agents_procs, tools, batch])
            bench.stack.wait_workers(fleet.app, agents.processes + 2, timeout=120)
            # Every process builds its clients and opens connections before the clock runs.
            warm = min(2 * agents.slots, 200)
            submit_warm = submission.runs_of(WARM_TWO_STEP_PROMPT)
            bench.wait_runs(fleet, WARM_TWO_STEP_PROMPT, warm, procs, 120, submit_warm)
            bench.simulator_stats(reset=True)
            groups = {"agents": agents_procs, "tools": [tools], "batch": [batch]}
            meter = bench.meter({**groups, **({"api": submission.api} if submission.api else {})})
            meter.start()
            _measure_concurrency(bench, result, fleet, agents, agents_procs, procs, submission)
            cpu_s, result.busy_pct = meter.stop(), meter.busy_pct
            stats = bench.simulator_stats()
            result.max_llm_in_flight = int(stats["max_in_flight"])
            result.account(cpu_s, int(stats["requests"]))
    except (StackError, OSError, redis.RedisError, TimeoutError) as exc:
        result.problem = f"{type(exc).__name__}: {exc}\n{bench.log_tails(procs)}"
    finally:
        fleet.close()
    return result


def _drive_runs(
    bench: Bench,
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
        result.problem = f"{problem}\n{bench.log_tails(procs)}"
    finished = tracker.succeeded(ok)
    result.done, result.failed = len(finished), len(tracker.finished) - len(finished)
    if finished:
        result.wall_s = finished[-1].at - first_enqueue
        result.effective_concurrency = result.done * 2 * SLOW_LLM_S / result.wall_s
    return finished


def _measure_concurrency(
    bench: Bench,
    result: ConcurrencyResult,
    fleet: Fleet,
    agents: AgentsPool,
    agents_procs: Sequence[Proc],
    procs: Sequence[Proc],
    submission: Submission,
) -> None:
    retries_before = [len(retry_countdowns(p)) for p in agents_procs]
    finished = _drive_runs(
        bench,
        result,
        submission.runs_of(TWO_STEP_PROMPT),
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


def _against_the_floor(results: Sequence[ConcurrencyResult]) -> str:
    """Each fleet configuration's effective concurrency and own CPU per run as a multiple of
    each floor's in the same bench run."""
    floors = [r for r in results if r.config.startswith(PLAIN_LLM)]
    lines = [
        f"{r.config} vs {floor.config}: effective concurrency "
        f"{ratio(r.effective_concurrency, floor.effective_concurrency):.2f}x, "
        f"own CPU per run {ratio(r.fleet_ms_per_run, floor.fleet_ms_per_run):.2f}x"
        for floor in floors
        for r in results
        if r not in floors and not math.isnan(r.effective_concurrency)
    ]
    return "".join(f"\n{line}" for line in ["", *lines]) if lines else ""


def report(results: Sequence[ConcurrencyResult]) -> str:
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
            r.fleet_ms_per_run,
            r.sim_ms_per_request,
            *(cpu_cell(r.cpu_s, name) for name in CPU_COLUMNS if name != "workers"),
        ]
        for r in results
    ]
    headers = [
        "agents pool", "runs", "enqueue s", "wall s", "eff. conc.", "max LLM in flight",
        "run p50 s", "run max s", "step retries", "longest retry s", "ok/failed", "busy %",
        "own cpu ms/run", "sim cpu ms/req",
        *(f"cpu {column}" for name, column in CPU_COLUMNS.items() if name != "workers"),
    ]  # fmt: skip
    text = table(
        f"(c) concurrency: 2-step runs at {SLOW_LLM_S:g} s per LLM call, tools prefork "
        f"1x{TOOLS_POOL.concurrency}\n    wall = first enqueue to last completion; eff. conc. "
        f"= runs x 2 x {SLOW_LLM_S:g} s / wall; enqueue ({ENQUEUE_THREADS} threads) shares "
        f"the {os.cpu_count()} cores\n    CPU in seconds from the first enqueue to the last "
        "completion; busy % = share of all cores busy\n    own cpu = the configuration's "
        "workers + API + Redis per run (not the simulator, which stands for a remote "
        "provider,\n    nor the load generator); sim cpu ms/req = the simulator's CPU per LLM "
        "request it answered",
        headers,
        rows,
    )
    text += _against_the_floor(results)
    floor = next((r for r in results if r.config.startswith(PLAIN_LLM)), None)
    scored = [
        r
        for r in results
        if not math.isnan(r.effective_concurrency) and not r.config.startswith(PLAIN_LLM)
    ]
    if scored and floor is not None:
        best = max(scored, key=lambda r: r.effective_concurrency)
        times = ratio(best.effective_concurrency, floor.effective_concurrency)
        cpu = ratio(best.fleet_ms_per_run, floor.fleet_ms_per_run)
        text += f"\n\nbest: {best.config}, effective concurrency {times:.2f}x the floor's "
        text += f"(target >= {TARGET_VS_FLOOR:g}x: {verdict(times >= TARGET_VS_FLOOR)}), own "
        text += f"CPU per run {cpu:.2f}x (target <= {TARGET_CPU_VS_FLOOR:g}x: "
        text += f"{verdict(cpu <= TARGET_CPU_VS_FLOOR)})"
    return text
