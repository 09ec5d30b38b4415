"""Redis restarted under load: every run finishes, the fleet reconnects, the API says 503.

A private fleet whose ``redis-server`` keeps an append-only file (``appendonly yes``,
``appendfsync everysec``): on SIGTERM Redis fsyncs the file and exits, and started again on the
same directory it loads every key back, queued messages and unacknowledged ones included.
``everysec`` rather than the ``always`` of production: a clean shutdown loses nothing either
way (what a *crash* loses is tests/test_redis_crash.py; docs/design.md, "Redis:
persistence and restarts").

A short visibility timeout (40 s), so messages held by a worker that lost its connection come
back within the test instead of after an hour; time limits well above the outage (a prefork
parent cannot collect finished jobs while it reconnects, and its time-limit timer keeps
running): llm_timeout 8 < step soft 10 < hard 12; chord recovery 22 + hard 12 + margin 1 < 40.
The watchdog is on, as in production, but late enough (15 s past a stage) to stay out of the way
of 200 runs queued on 50 threads.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from ops.stack import PoolSpec, Proc, Stack, StackError, wait_for
from tests.conftest import SHORT_LIMITS, Fleet, private_fleet
from tests.test_worker_loss import AGENTS, BATCH

RESTART_ENV = {
    **SHORT_LIMITS,
    "AGENTFLEET_LLM_TIMEOUT": "8",
    "AGENTFLEET_STEP_SOFT_TIME_LIMIT": "10",
    "AGENTFLEET_STEP_TIME_LIMIT": "12",
    "AGENTFLEET_TOOL_SOFT_TIME_LIMIT": "10",
    "AGENTFLEET_TOOL_TIME_LIMIT": "12",
    "AGENTFLEET_VISIBILITY_TIMEOUT": "40",
    # Past the backlog of 200 runs, so that the watchdog resends only what was really lost.
    "AGENTFLEET_STALL_TIMEOUT": "15",
}
TOOLS_8 = PoolSpec("tools", "prefork", 8)
RUNS = 200
#: How long Redis stays down: long enough to probe the API and for workers to notice.
DOWN_SECONDS = 3.0
#: A client timeout well above what a 503 should take, so a hang shows as a timeout.
PROBE_TIMEOUT = 10.0
APPEND_ONLY = ["--appendonly", "yes", "--appendfsync", "everysec"]
#: What a worker logs when its consumer loses the broker connection and starts reconnecting.
CONNECTION_LOST = "consumer: Connection to broker lost"


@pytest.fixture(scope="module")
def persistent_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    def start(stack: Stack) -> None:
        stack.start_redis(extra_args=APPEND_ONLY)
        stack.start_fleet(pools=(AGENTS, TOOLS_8, BATCH))  # Redis above is kept

    stack = Stack(Path(tmp_path_factory.mktemp("restart")), env_overrides=RESTART_ENV)
    with private_fleet(stack, start, 3) as fleet:
        yield fleet


def _redis_proc(stack: Stack) -> Proc:
    return next(p for p in stack.procs if p.name == "redis" and p.alive())


def _with_tools(i: int) -> bool:
    # One run in eight calls tools, so the restart lands in LLM calls, in tools and between
    # steps; eight tool processes keep them all running at once.
    return i % 8 == 0


def _prompt(i: int) -> str:
    if _with_tools(i):
        return f'[[latency:1]] call wait {{"seconds": 2}} call text_stats {{"text": "r{i}"}}'
    return f"[[latency:2]] plain run {i}"


def _probe(http: httpx.Client, method: str, path: str, body: object = None) -> tuple[int, float]:
    started = time.monotonic()
    response = http.request(method, path, json=body, timeout=PROBE_TIMEOUT)
    return response.status_code, time.monotonic() - started


def test_runs_survive_a_redis_restart(persistent_fleet: Fleet, wait: Callable[..., None]) -> None:
    fleet, stack = persistent_fleet, persistent_fleet.stack
    ids = [fleet.client.create_run(_prompt(i)).id for i in range(RUNS)]

    def statuses() -> Counter[str]:
        return Counter(fleet.client.get_run(i).status for i in ids)

    def tools_running() -> int:
        pipe = fleet.redis.pipeline(transaction=False)
        for i in filter(_with_tools, range(RUNS)):
            pipe.hget(f"af:tool:{ids[i]}-1-0", "status")
        return sum(status == "running" for status in pipe.execute())

    # Restart in the middle: LLM calls in flight, tools running, most runs not finished.
    wait(
        lambda: fleet.sim_stats()["in_flight"] >= 20 and tools_running() >= 3,
        60,
        "LLM calls in flight and tools running",
        interval=0.1,
    )
    pipe = fleet.redis.pipeline(transaction=False)
    for run_id in ids:
        pipe.hget(f"af:run:{run_id}", "status")
    before = Counter(pipe.execute())
    assert before["succeeded"] < RUNS // 2, before

    victim = _redis_proc(stack)
    stack.kill(victim, signal.SIGTERM)  # a clean shutdown: Redis writes its AOF and exits
    victim.popen.wait(timeout=20)
    down_at = time.monotonic()

    # While Redis is down the API answers 503 at once, for reads and for new work.
    probes = {
        "get": _probe(fleet.http, "GET", f"/v1/runs/{ids[0]}"),
        "post": _probe(fleet.http, "POST", "/v1/runs", {"input": "while redis is down"}),
        "healthz": _probe(fleet.http, "GET", "/healthz"),
    }
    time.sleep(max(DOWN_SECONDS - (time.monotonic() - down_at), 0))

    revived = stack.spawn("redis", [str(arg) for arg in victim.popen.args])  # same port and dir
    # In the dead one's place, so that the stack still stops Redis after the workers.
    stack.procs.remove(revived)
    stack.procs[stack.procs.index(victim)] = revived
    client = redis.Redis.from_url(stack.redis_url or "", socket_connect_timeout=1)
    wait_for(lambda: bool(client.ping()), 30, "redis-server to come back")
    client.close()

    for name, (status, elapsed) in probes.items():
        assert status == 503, (name, status)
        assert elapsed < 2.0, (name, elapsed)

    # Every run finishes, and its result is readable by ID through the API.
    with contextlib.suppress(StackError):
        wait(lambda: statuses()["succeeded"] == RUNS, 180, "every run to finish", interval=1)
    final = statuses()
    stuck = [i for i in ids if fleet.client.get_run(i).status != "succeeded"]
    detail = {i: fleet.redis.hgetall(f"af:run:{i}") for i in stuck[:3]}
    assert final == Counter({"succeeded": RUNS}), (before, final, detail)
    for run_id in ids[:: RUNS // 20]:
        run = fleet.client.get_run(run_id)
        assert run.result
        assert fleet.app.AsyncResult(run_id).get(timeout=10)["status"] == "succeeded"
    # Each step's answer was applied once, and no tool call was stopped and run again.
    runs = [fleet.client.get_run(i) for i in ids]
    assert [r.usage.llm_calls for r in runs] == [2 if _with_tools(i) else 1 for i in range(RUNS)]
    calls = [f"af:tool:{ids[i]}-1-{k}" for i in range(RUNS) if _with_tools(i) for k in (0, 1)]
    attempts = [int(fleet.redis.hget(key, "attempts") or 0) for key in calls]
    assert attempts == [1] * len(calls)

    # Workers and the API reconnected by themselves: same processes, new work flows.
    assert all(p.alive() for p in stack.procs if p.name.startswith(("worker-", "api-")))
    assert len(stack.wait_workers(fleet.app, 3, timeout=30)) == 3
    after = fleet.client.wait(fleet.client.create_run('call calculator {"expression": "6*7"}').id)
    assert after.status == "succeeded"
    assert after.result == "Results: calculator=42.0"


def test_workers_reconnect_when_redis_drops_their_subscriptions(
    persistent_fleet: Fleet, wait: Callable[..., None]
) -> None:
    # Redis closes the connection each worker listens on for control commands (its pidbox
    # subscription) and accepts new connections at once: what a worker meets when Redis comes
    # back before it reads the close (a crash, on a loaded machine), or when Redis drops a
    # subscriber (CLIENT KILL, its pub/sub output buffer limit). Each worker must reconnect
    # and consume again, not wait forever on a new connection that subscribes to nothing.
    fleet, stack = persistent_fleet, persistent_fleet.stack
    assert len(stack.wait_workers(fleet.app, 3, timeout=30)) == 3
    workers = [p for p in stack.procs if p.name.startswith("worker-")]
    lost = {p.name: p.log.read_text(errors="replace").count(CONNECTION_LOST) for p in workers}

    assert fleet.redis.client_kill_filter(_type="pubsub", skipme=True) >= len(workers)

    run_id = fleet.client.create_run('call calculator {"expression": "6*7"}').id
    with contextlib.suppress(StackError):
        wait(lambda: fleet.client.get_run(run_id).status == "succeeded", 60, "the run")
    tails = {p.name: p.tail(15) for p in workers}
    assert fleet.client.get_run(run_id).status == "succeeded", tails
    assert len(stack.wait_workers(fleet.app, 3, timeout=30)) == 3
    # Each reconnected as it does after any lost broker connection.
    again = {p.name: p.log.read_text(errors="replace").count(CONNECTION_LOST) for p in workers}
    assert all(again[name] > lost[name] for name in lost), (lost, again)
