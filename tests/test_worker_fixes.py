"""The fixes of ``agentfleet.workers.fixes`` keep their behaviour, and only workers get them.

``controlflow``: ``Ignore`` is kept without its traceback, every other exception with it.
``event_batching``: a worker's task events, the task-sent of what it publishes included, share
their publishes, and none is lost. ``result_backend``: workers keep no subscription to results
they never wait for, and store a state in one script that never overwrites a ``SUCCESS``; a
threads worker keeps fewer Redis connections than steps in flight. ``redis_eventloop``: a
subscription Redis drops raises instead of hanging its reader. A process that builds the app
without being a worker keeps Celery's own code for all of them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from queue import Empty, Queue
from typing import Any
from urllib.parse import urlsplit

import kombu
import pytest
import redis
from celery.exceptions import Ignore

from agentfleet.tasks import names
from agentfleet.tasks.errors import RunFailed
from agentfleet.workers.conf import transport_options
from agentfleet.workers.fixes import event_batching
from agentfleet.workers.fixes.controlflow import ControlFlowExceptionInfo
from agentfleet.workers.fixes.redis_transport import Transport
from agentfleet.workers.fixes.result_backend import store_result_once
from ops.stack import PoolSpec, Stack, wait_for
from tests.conftest import Fleet, private_fleet


def _info_of(exc: BaseException) -> ControlFlowExceptionInfo:
    try:
        raise exc
    except BaseException:
        return ControlFlowExceptionInfo(internal=True)


def test_ignore_keeps_no_traceback() -> None:
    info = _info_of(Ignore("replaced"))
    assert info.tb is None
    assert info.traceback == "Ignore: replaced"
    assert isinstance(info.exception.exc, Ignore)
    assert info.internal


def test_other_exceptions_keep_their_traceback() -> None:
    info = _info_of(ValueError("boom"))
    assert info.tb is not None
    assert info.traceback.startswith("Traceback (most recent call last):")
    assert "_info_of" in info.traceback
    assert info.traceback.rstrip().endswith("ValueError: boom")


#: Run in a fresh process that builds the app as the API and the CLI do
#: (``agentfleet.workers.app``), sends a task and waits for it: prints what is not Celery's own.
NOT_A_WORKER = """
import json
from celery.app import trace
from billiard.einfo import ExceptionInfo
from agentfleet.workers import app
from agentfleet.workers.fixes import result_backend
from tests.test_celery_names import OVERRIDDEN

foreign = [
    f"{owner.__name__}.{name}" for owner, name, _ in OVERRIDDEN
    if not getattr(owner, name).__module__.startswith(("celery.", "kombu.", "billiard."))
]
if trace.ExceptionInfo is not ExceptionInfo:
    foreign.append("trace.ExceptionInfo")
if app.conf.worker_consumer != "celery.worker.consumer:Consumer":
    foreign.append("worker_consumer " + app.conf.worker_consumer)
if result_backend.in_worker_mode():
    foreign.append("worker mode")
result = app.send_task("agentfleet.run", kwargs={"request": {"input": "not a worker"}})
result.then(print)  # a waiting process tracks what it waits for
tracked = any(result.id in pending for pending in app.backend._pending_results)
status = result.get(timeout=30)["status"]
print(json.dumps({"foreign": foreign, "tracked": tracked, "status": status}))
"""


def test_a_process_that_is_not_a_worker_keeps_celerys_own_code(fleet: Fleet) -> None:
    done = subprocess.run(
        [sys.executable, "-c", NOT_A_WORKER],
        env=fleet.stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen == {"foreign": [], "tracked": True, "status": "succeeded"}


def test_workers_install_their_fixes(fleet: Fleet) -> None:
    # Every pool of the fleet: the agents threads pool and the prefork tools and batch pools.
    for queue in ("agents", "tools", "batch"):
        log = fleet.worker_of(queue).log.read_text(errors="replace")
        assert "worker fixes installed" in log, fleet.worker_of(queue).tail()
        assert "speed fixes off" not in log


def test_workers_keep_no_subscription_to_tool_results(fleet: Fleet) -> None:
    # A step that dispatches tool calls freezes a chord; the worker must not stay subscribed
    # to its members' result channels (workers/fixes/result_backend.py).
    calls = " ".join(f'call text_stats {{"text": "{w}"}}' for w in ("a", "b", "c"))
    run_id = fleet.client.create_run(calls).id
    assert fleet.client.wait(run_id, timeout=60).status == "succeeded"
    assert fleet.redis.pubsub_channels(f"celery-task-meta-{run_id}*") == []


def _connections_to(pid: int, port: int) -> int:
    """TCP connections process ``pid`` holds to ``port`` on this host."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            sockets.add(target[len("socket:[") : -1])
    found = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            found += remote_port == port and fields[9] in sockets
    return found


def test_a_threads_worker_keeps_fewer_redis_connections_than_steps_in_flight(
    tmp_path: Path,
) -> None:
    # Celery gives each thread a backend of its own, with its own pool and connection, unless
    # result_backend_thread_safe: a threads worker would keep a Redis connection, and its
    # reader's 64 KB buffer, for every step it ever ran at once. A fresh worker, so that what
    # is counted is what these steps made.
    threads = 100

    def start(stack: Stack) -> None:
        stack.start_redis()
        stack.start_simulator()
        stack.start_worker(PoolSpec("agents", "threads", threads))
        stack.start_api()

    with private_fleet(Stack(tmp_path), start, 1) as fleet:
        ids = [fleet.client.create_run(f"[[latency:4]] parked {i}").id for i in range(threads)]
        wait_for(lambda: fleet.sim_stats()["in_flight"] >= threads, 30, "every step parked")
        port = int(urlsplit(fleet.stack.redis_url or "").port or 0)
        held = _connections_to(fleet.worker_of("agents").popen.pid, port)
        for run_id in ids:
            assert fleet.client.wait(run_id, timeout=60).status == "succeeded"
    # The run store's pool, the backend's, the broker's consumer and producers: each holds
    # what its users need at once, not one connection per thread.
    assert held < threads // 2


def test_one_round_trip_store_keeps_celerys_rules(fleet: Fleet) -> None:
    backend = fleet.app.backend
    task_id = f"test-store-{uuid.uuid4().hex}"

    def stored() -> tuple[str, object]:
        result = fleet.app.AsyncResult(task_id)  # a new one: a ready result caches its state
        return result.state, result.result

    store_result_once(backend, task_id, {"pid": 1}, "STARTED")
    assert stored() == ("STARTED", {"pid": 1})
    assert 0 < fleet.redis.ttl(f"celery-task-meta-{task_id}") <= backend.expires
    store_result_once(backend, task_id, {"answer": 42}, "SUCCESS")
    assert stored() == ("SUCCESS", {"answer": 42})
    # A late or redelivered state never replaces a stored SUCCESS.
    store_result_once(backend, task_id, {"pid": 2}, "STARTED")
    late = backend.prepare_exception(ValueError("late"))
    store_result_once(backend, task_id, late, "FAILURE")
    assert stored() == ("SUCCESS", {"answer": 42})


def test_a_runs_failure_is_stored_only_as_its_end(fleet: Fleet) -> None:
    # What Celery passes on to a run's step when a tool call of its chain fails, and the
    # run's own end, as the worker stores them (the run records' prefix installed).
    backend = fleet.app.backend
    run_id = fleet.client.create_run("a run to fail").id
    fleet.client.wait(run_id, timeout=30)
    run_keys = f"{fleet.settings.redis.key_prefix}:run:"
    fleet.redis.delete(f"celery-task-meta-{run_id}")
    lost = backend.prepare_exception(TimeoutError("tool call killed"))
    store_result_once(backend, run_id, lost, "FAILURE", run_keys=run_keys)
    assert fleet.redis.get(f"celery-task-meta-{run_id}") is None
    end = backend.prepare_exception(RunFailed("run failed: tool_call_lost", {"id": run_id}))
    store_result_once(backend, run_id, end, "FAILURE", run_keys=run_keys)
    result = fleet.app.AsyncResult(run_id)
    assert result.state == "FAILURE"
    assert isinstance(result.result, RunFailed)
    assert result.result.record == {"id": run_id}
    # A task ID that names no run stores any failure, as Celery does.
    other = f"test-store-{uuid.uuid4().hex}"
    store_result_once(backend, other, lost, "FAILURE", run_keys=run_keys)
    assert fleet.app.AsyncResult(other).state == "FAILURE"


def test_one_round_trip_store_publishes_the_state(fleet: Fleet) -> None:
    # What AsyncResult.get() waits on: the state is published on the task's channel.
    backend = fleet.app.backend
    task_id = f"test-store-{uuid.uuid4().hex}"
    pubsub = fleet.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"celery-task-meta-{task_id}")
    try:
        store_result_once(backend, task_id, "done", "SUCCESS")
        message = None
        for _ in range(50):
            message = pubsub.get_message(timeout=0.1)
            if message:
                break
        assert message is not None
        assert '"status": "SUCCESS"' in message["data"]
    finally:
        pubsub.close()


def _task_events(message: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The task events one ``PUBLISH`` of kombu's Redis fanout carries, and whether it carries
    them as a batch (a flushed buffer) rather than one event published on its own."""
    envelope = json.loads(message["data"])
    body = json.loads(base64.b64decode(envelope["body"]))
    return (body, True) if isinstance(body, list) else ([body], False)


def test_a_workers_task_events_share_their_publishes(fleet: Fleet) -> None:
    # event_batching: the agents worker's received, started and succeeded events of a run go
    # out in one PUBLISH per window, not one each (Celery's own consumer: three a run). None
    # is lost on the way.
    pubsub = fleet.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("*celeryev/task.*")
    try:
        assert pubsub.get_message(timeout=1) is None  # the subscription is in place
        run_ids = []
        for i in range(6):
            run_id = fleet.client.create_run(f"events in one publish {i}").id
            assert fleet.client.wait(run_id, timeout=30).status == "succeeded"
            run_ids.append(run_id)
            time.sleep(2 * event_batching.EVENT_FLUSH_DELAY)  # each run its own window
        # A step that dispatches a tool call: the task-sent event the agents worker makes for
        # it joins the worker's batch instead of a PUBLISH of its own. (The tools worker's
        # prefork child that sends the next step has no consumer: it publishes as Celery does.)
        tool_run = fleet.client.create_run('call text_stats {"text": "sent"}').id
        assert fleet.client.wait(tool_run, timeout=30).status == "succeeded"
        time.sleep(2 * event_batching.EVENT_FLUSH_DELAY)
        publishes, seen, sent_batched = 0, set(), []
        while (message := pubsub.get_message(timeout=0.5)) is not None:
            batch, batched = _task_events(message)
            sent_batched += [
                batched
                for e in batch
                if e["type"] == "task-sent" and e.get("name") == names.TOOL_CALL
            ]
            events = [
                e for e in batch if e.get("uuid") in run_ids and e["hostname"].startswith("agents")
            ]
            publishes += bool(events)
            seen |= {(e["uuid"], e["type"]) for e in events}
    finally:
        pubsub.close()
    kinds = ("task-received", "task-started", "task-succeeded")
    assert seen == {(run_id, kind) for run_id in run_ids for kind in kinds}
    assert publishes <= len(run_ids) + 2, publishes
    assert sent_batched  # the tool call's task-sent event arrived
    assert all(sent_batched), sent_batched


def test_a_subscription_redis_drops_raises_instead_of_hanging_its_reader(tmp_path: Path) -> None:
    # redis_eventloop: Redis closes the subscription a consumer reads in its event loop and
    # accepts new connections at once. The read must raise, so that the consumer reconnects,
    # not reconnect and wait forever on a connection that subscribes to nothing. The test goes
    # through every kombu and redis-py name the fix relies on, as a consumer does, with the
    # workers' transport options: a change to one of them fails here.
    with Stack(tmp_path) as stack:
        url = stack.start_redis()
        admin = redis.Redis.from_url(url)
        options = transport_options(stack.settings())
        with kombu.Connection(url, transport=Transport, transport_options=options) as connection:
            channel = connection.channel()
            fanout = kombu.Queue("fixes-fanout", kombu.Exchange("fixes-fanout", "fanout"))
            kombu.Consumer(channel, [fanout]).consume()
            connection.transport.cycle.on_poll_start()  # subscribes, as each turn of the loop does
            channel._receive()  # the confirmation: the subscription is in place
            assert admin.client_kill_filter(_type="pubsub") == 1

            outcome: Queue[BaseException | None] = Queue()

            def read() -> None:
                try:
                    channel._receive_one(channel.subclient)
                except BaseException as exc:  # handed to the test's thread
                    outcome.put(exc)
                else:
                    outcome.put(None)

            # A thread of its own: without the fix it never returns (until Redis stops).
            threading.Thread(target=read, daemon=True).start()
            try:
                raised = outcome.get(timeout=10)
            except Empty:
                pytest.fail("the read of the dropped subscription still waits after 10 s")
            assert isinstance(raised, redis.ConnectionError), raised
        admin.close()
