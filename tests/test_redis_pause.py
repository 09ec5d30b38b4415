"""Redis paused (SIGSTOP) under a stream of POSTs: a 503 means nothing was accepted.

A paused Redis is worse than a stopped one: the kernel still accepts connections and buffers
the commands sent to it, and Redis applies them all when it resumes. A request caught half-way
(its run record written, its message published, its acceptance not yet confirmed) answers
503, and its buffered writes land later; none of them may start the work. Each trial pauses
the fleet's Redis while eight clients post runs, tool calls and batches with
``Idempotency-Key``s, resumes it, lets the workers drain everything, and checks every key:
work refused never ran, work accepted ran once, and the same POSTs sent again make exactly
one of each (docs/design.md, "Redis: persistence and restarts").
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentfleet.tasks import names
from agentfleet.tasks.llm import resolve_chain
from agentfleet.tasks.models import RunRequest
from agentfleet.tasks.store import RunStore
from agentfleet.tasks.toolcall import tool_payload
from ops.stack import PoolSpec, Proc, Stack
from tests.conftest import SHORT_LIMITS, Fleet, private_fleet, with_pools

POOLS = (
    PoolSpec("agents", "threads", 20),
    PoolSpec("tools", "prefork", 2),
    PoolSpec("batch", "prefork", 1),
)
#: What each of the eight clients posts, over and over, while Redis is paused.
CLIENTS = ("run", "run", "run", "run", "run", "tool", "tool", "batch")
#: How long Redis stays paused: long enough for every client to be refused at least once.
PAUSED_SECONDS = 2.5
#: The longest a 503 may take while Redis hangs (the API waits about 1 s for a reply).
MAX_REFUSAL_SECONDS = 1.5
TRIALS = 3


@pytest.fixture(scope="module")
def paused_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    # Short limits: the watchdog resends an overdue run 5 s after its stage, and workers drop
    # the messages of work never accepted 5 s after it was written, within the test.
    env = SHORT_LIMITS | {"AGENTFLEET_PENDING_TTL": "5"}
    stack = Stack(Path(tmp_path_factory.mktemp("pause")), env_overrides=env)
    with private_fleet(stack, with_pools(*POOLS), len(POOLS)) as fleet:
        yield fleet


@dataclass
class Post:
    kind: str
    key: str
    status: int | str = 0
    seconds: float = 0.0
    started: float = 0.0
    ident: str = ""
    detail: str = ""


def _request(kind: str, key: str) -> tuple[str, dict[str, Any]]:
    if kind == "run":
        return "/v1/runs", {"input": f"[[tag:{key}]] run {key}"}
    if kind == "tool":
        return "/v1/tool-calls", {"name": "record_sleep", "arguments": {"key": key, "seconds": 0}}
    items = [{"type": "prompt", "input": f"[[tag:{key}]] item {i}"} for i in range(2)]
    return "/v1/batches", {"items": items}


def _send(http: httpx.Client, post: Post) -> Post:
    path, body = _request(post.kind, post.key)
    post.started = time.monotonic()
    try:
        response = http.post(path, json=body, headers={"Idempotency-Key": post.key})
        post.status = response.status_code
        if response.status_code == 202:
            post.ident = response.json()["id"]
        else:
            post.detail = response.text
    except httpx.HTTPError as exc:
        post.status = type(exc).__name__
    post.seconds = time.monotonic() - post.started
    return post


def _executions(fleet: Fleet, post: Post) -> int:
    """How many times the work of ``post`` ran: LLM calls of its tag, or tool executions."""
    if post.kind == "tool":
        return int(fleet.redis.get(f"test:started:{post.key}") or 0)
    return fleet.tagged(post.key)


def _expected(post: Post) -> int:
    return 2 if post.kind == "batch" else 1


def _quiet(fleet: Fleet) -> bool:
    """Nothing queued, held, retrying or due: every message has been consumed and settled."""

    def once() -> bool:
        pipe = fleet.redis.pipeline(transaction=False)
        for queue in ("agents", "tools", "batch"):
            pipe.llen(queue)
        pipe.hlen("unacked")
        pipe.zcard(f"{fleet.settings.redis.key_prefix}:runs:active")
        return not any(pipe.execute()) and fleet.sim_stats()["in_flight"] == 0

    if not once():
        return False
    time.sleep(0.5)  # and still so a moment later: a message between queue and worker shows
    return once()


def _post_while_paused(fleet: Fleet, redis_proc: Proc, trial: int) -> tuple[list[Post], float]:
    """Eight clients post until Redis has been paused for PAUSED_SECONDS; their posts, and
    when the pause began."""
    posts: list[Post] = []
    stop = threading.Event()
    counter = itertools.count()
    lock = threading.Lock()

    def client(kind: str) -> None:
        headers = {"Authorization": f"Bearer {fleet.stack.api_key}"}
        with httpx.Client(base_url=fleet.stack.api_url, headers=headers, timeout=30) as http:
            while not stop.is_set():
                post = Post(kind, f"pause-{trial}-{kind}-{next(counter)}")
                with lock:
                    posts.append(post)
                _send(http, post)

    threads = [threading.Thread(target=client, args=(kind,)) for kind in CLIENTS]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while sum(p.status == 202 for p in posts) < 3 * len(CLIENTS):  # flowing, and in flight
        assert time.monotonic() < deadline, "the clients never got going"
        time.sleep(0.01)
    paused_at = time.monotonic()
    os.kill(redis_proc.popen.pid, signal.SIGSTOP)
    try:
        time.sleep(PAUSED_SECONDS)  # the outage itself
        stop.set()
    finally:
        os.kill(redis_proc.popen.pid, signal.SIGCONT)
    for thread in threads:
        thread.join()
    return posts, paused_at


def test_a_refused_post_never_runs_and_its_retry_runs_once(
    paused_fleet: Fleet, wait: Callable[..., None]
) -> None:
    fleet = paused_fleet
    redis_proc = next(p for p in fleet.stack.procs if p.name == "redis")
    caught_in_flight = 0
    for trial in range(TRIALS):
        posts, paused_at = _post_while_paused(fleet, redis_proc, trial)
        wait(lambda: _quiet(fleet), 90, "the fleet to drain what Redis took back")

        refused = [p for p in posts if p.status == 503]
        assert refused, "no POST was refused while Redis was paused"
        caught_in_flight += sum(p.started < paused_at for p in refused)
        ran = {p.key: _executions(fleet, p) for p in posts}
        # Refused work never ran, even though some of its writes reached Redis later.
        assert {(p.key, p.detail): ran[p.key] for p in refused if ran[p.key]} == {}, trial
        accepted = [p for p in posts if p.status == 202]
        assert {p.key: ran[p.key] for p in accepted if ran[p.key] != _expected(p)} == {}, trial
        odd = [p for p in posts if p.status not in (202, 503)]
        assert odd == [], trial
        slow = [
            (p.key, round(p.seconds, 2), p.detail)
            for p in refused
            if p.seconds > MAX_REFUSAL_SECONDS
        ]
        assert slow == [], trial

        # The same POSTs again: an accepted one answers as before, a refused one now runs.
        headers = {"Authorization": f"Bearer {fleet.stack.api_key}"}
        with httpx.Client(base_url=fleet.stack.api_url, headers=headers, timeout=30) as http:
            again = [_send(http, Post(p.kind, p.key)) for p in posts]
        assert {a.status for a in again} == {202}
        assert [a.ident for a in again if a.key in {p.key for p in accepted}] == [
            p.ident for p in accepted
        ]
        wait(lambda: _quiet(fleet), 90, "the retried work to finish")
        twice = {p.key: n for p in posts if (n := _executions(fleet, p)) != _expected(p)}
        assert twice == {}, trial
    # The pause caught requests half-way through, not only ones sent while it lasted.
    assert caught_in_flight > 0


def test_workers_start_only_what_the_api_accepted(
    paused_fleet: Fleet, wait: Callable[..., None]
) -> None:
    """The worker side of the above, step by step: a message that arrives before its work is
    accepted waits for it, and one whose work is never accepted is dropped."""
    fleet = paused_fleet
    store = RunStore(fleet.redis, fleet.settings)
    chain = resolve_chain(fleet.settings, None)
    for run_id in ("accepted-late", "never-accepted"):
        request = RunRequest(input=f"[[tag:{run_id}]] hello")
        store.create_run(run_id, request, [], chain, pending=f"token-{run_id}")
        fleet.app.send_task(names.RUN, task_id=run_id, kwargs={"request": None})
    calls = {"tool-accepted-late": None, "tool-never-accepted": None, "tool-forged": "forged"}
    for call_id, forged in calls.items():
        arguments = {"key": call_id, "seconds": 0}
        store.create_tool_call(call_id, "record_sleep", arguments, pending=f"token-{call_id}")
        token = forged or f"token-{call_id}"
        payload = tool_payload(call_id, "record_sleep", arguments, accept=token)
        fleet.app.send_task(names.TOOL_CALL, args=(payload,), task_id=call_id)

    def accept(key: str, companion: str, token: str, run_id: str | None = None) -> str:
        return store.accept(key, companion, f"token-{token}", run_id=run_id)[0]

    def tool_started() -> int:
        return int(fleet.redis.get("test:started:tool-accepted-late") or 0)

    def held(ident: str) -> bool:
        return bool(fleet.app.AsyncResult(ident).state == "RETRY")

    wait(lambda: held("accepted-late") and held("tool-accepted-late"), 10, "both held")
    assert fleet.tagged("accepted-late") == tool_started() == 0
    run_key, tool_key = store.run_key("accepted-late"), store.tool_key("tool-accepted-late")
    assert accept(run_key, f"{run_key}:messages", "accepted-late", "accepted-late") == "accepted"
    assert accept(tool_key, tool_key, "tool-accepted-late") == "accepted"
    # Both start as soon as the worker looks again, not when their records would expire (5 s).
    wait(lambda: fleet.client.get_run("accepted-late").status == "succeeded", 4, "the run")
    wait(lambda: tool_started() == 1, 4, "the tool call")

    never = store.run_key("never-accepted")
    wait(lambda: not fleet.redis.exists(never), 10, "the pending run to expire")
    assert accept(never, f"{never}:messages", "never-accepted", "never-accepted") == "expired"
    wait(lambda: _quiet(fleet), 30, "the workers to drop what was never accepted")
    assert fleet.tagged("accepted-late") == 1
    assert fleet.tagged("never-accepted") == 0
    started = ["test:started:tool-never-accepted", "test:started:tool-forged"]
    assert fleet.redis.mget(started) == [None, None]
    assert fleet.http.get("/v1/runs/never-accepted").status_code == 404
