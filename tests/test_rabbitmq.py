"""RabbitMQ as the broker: quorum queues, native delayed delivery, Redis as result backend.

A private fleet whose broker is a fresh vhost on the machine's RabbitMQ (``RABBITMQ_URL``,
default ``amqp://guest:guest@127.0.0.1:5672``), made with ``rabbitmqctl`` for this module and
deleted afterwards. Runs with parallel tool calls, a tool call, retries with countdowns, and
workers SIGKILLed mid-load (the scenarios of ``test_worker_loss``) must all hold on it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from agentfleet.workers import queues
from ops.stack import Stack
from tests.conftest import SHORT_LIMITS, Fleet, private_fleet, with_pools
from tests.test_worker_loss import (
    AGENTS,
    BATCH,
    TOOLS,
    kill_agents_worker_mid_load,
    kill_tools_worker_mid_load,
)

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
#: Quick retries, so the countdown path is taken in seconds: backoff 0.3 s then 0.6 s, both
#: under a second, which native delayed delivery cannot express (see agentfleet.workers.broker).
RABBIT_ENV = {
    **SHORT_LIMITS,
    "AGENTFLEET_LLM_MAX_RETRIES": "2",
    "AGENTFLEET_RETRY_BACKOFF_BASE": "0.3",
}


def _ctl(*args: str) -> str:
    out = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout


def _unavailable() -> str | None:
    """Why the RabbitMQ tests cannot run here, or None."""
    url = urlsplit(RABBITMQ_URL)
    host, port = url.hostname or "127.0.0.1", url.port or 5672
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        return f"no RabbitMQ at {host}:{port} ({exc}); set RABBITMQ_URL to run these tests"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed: it is needed to create a private vhost"
    return None


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    """A fresh vhost with permissions for the URL's user; deleted afterwards."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    name = f"agentfleet-test-{uuid.uuid4().hex[:10]}"
    user = unquote(urlsplit(RABBITMQ_URL).username or "guest")
    try:
        _ctl("add_vhost", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"rabbitmqctl cannot create a vhost here: {exc.stderr.strip()}")
    try:
        _ctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield name
    finally:
        _ctl("delete_vhost", name)


def broker_url(vhost: str) -> str:
    return f"{RABBITMQ_URL.rstrip('/')}/{vhost}"


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    with private_vhost() as name:
        yield name


@pytest.fixture(scope="module")
def rabbit_fleet(vhost: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = Path(tmp_path_factory.mktemp("rabbitmq"))
    stack = Stack(workdir, env_overrides=RABBIT_ENV, broker_url=broker_url(vhost))
    with private_fleet(stack, with_pools(AGENTS, TOOLS, BATCH), 3) as fleet:
        yield fleet


def _queues(vhost: str) -> dict[str, tuple[str, int]]:
    """Queue name -> (type, messages) in ``vhost``."""
    rows = _ctl("list_queues", "-p", vhost, "--no-table-headers", "name", "type", "messages")
    found = {}
    for line in rows.splitlines():
        name, kind, messages = line.split("\t")
        found[name] = (kind, int(messages))
    return found


def test_the_fleet_runs_on_quorum_queues(rabbit_fleet: Fleet, vhost: str) -> None:
    assert rabbit_fleet.app.conf.broker_url.startswith("amqp://")
    found = _queues(vhost)
    assert {name: found[name][0] for name in queues.ALL} == dict.fromkeys(queues.ALL, "quorum")
    # Native delayed delivery: the 28 levels of delay queues the workers declared.
    assert {f"celery_delayed_{level}" for level in range(28)} <= set(found)


def _delayed_bindings(vhost: str) -> set[tuple[str, ...]]:
    """(source, destination, routing key) of the bindings that route due countdowns."""
    columns = ("source_name", "destination_name", "routing_key")
    rows = _ctl("list_bindings", "-p", vhost, "--no-table-headers", *columns)
    found = {tuple(line.split("\t")) for line in rows.splitlines()}
    return {b for b in found if b[-1].startswith("#.")}


def test_one_worker_binds_every_queue_for_delayed_delivery(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # The first worker on a fresh vhost consumes one queue; a countdown for the other queues
    # must still find its way back once due (a binding from the delivery exchange).
    with private_vhost() as name:
        stack = Stack(Path(tmp_path_factory.mktemp("rabbit-one")), broker_url=broker_url(name))
        try:
            stack.start_redis()
            stack.start_worker(BATCH)
            stack.wait_workers(stack.celery_app(), 1)
            expected = set()
            for queue in queues.ALL:
                expected |= {
                    ("celery_delayed_delivery", queue, f"#.{queue}"),
                    (queue, queue, f"#.{queue}"),
                }
            assert _delayed_bindings(name) >= expected
        finally:
            stack.stop()


def test_parallel_tool_calls_as_a_chord(rabbit_fleet: Fleet) -> None:
    fleet = rabbit_fleet
    prompt = " ".join(
        f'call record_sleep {{"key": "rq-par-{i}", "seconds": 1.0}}' for i in range(3)
    )
    run = fleet.client.wait(fleet.client.create_run(prompt).id, timeout=60)
    assert run.status == "succeeded", run.error
    assert run.progress.tool_calls_done == 3
    assert run.usage.llm_calls == 2
    assert run.result is not None
    assert run.result.count("record_sleep=") == 3
    for i in range(3):
        assert fleet.redis.get(f"test:completed:rq-par-{i}") == "1"
    # The final record is the run ID's Celery result, in the Redis result backend.
    final = fleet.app.AsyncResult(run.id).get(timeout=10)
    assert final["status"] == "succeeded"
    assert final["id"] == run.id


def test_a_batch_as_a_chord(rabbit_fleet: Fleet) -> None:
    items: list[dict[str, object]] = [
        {"input": f'call calculator {{"expression": "{i}*3"}}'} for i in range(30)
    ]
    items += [{"type": "tool_call", "name": "calculator", "arguments": {"expression": "7*6"}}]
    items += [{"input": '[[loop]] call calculator {"expression": "1"}', "max_steps": 1}]
    batch_id = rabbit_fleet.client.create_batch(items).id
    batch = rabbit_fleet.client.wait_batch(batch_id, timeout=120)
    assert batch.status == "completed"
    assert (batch.completed, batch.total) == (32, 32)
    assert batch.counts.succeeded == 31
    assert batch.counts.failed == 1
    assert batch.result is not None
    assert [f["error"]["code"] for f in batch.result["failed_items"]] == ["max_steps_exceeded"]


def test_a_tool_call(rabbit_fleet: Fleet) -> None:
    accepted = rabbit_fleet.client.create_tool_call("calculator", {"expression": "2 ** 10"})
    call = rabbit_fleet.client.wait_tool_call(accepted.id, timeout=30)
    assert call.status == "succeeded"
    assert call.result is not None
    assert call.result["ok"] is True
    assert call.result["output"] == 1024.0


def test_a_countdown_waits_on_the_broker(
    rabbit_fleet: Fleet, vhost: str, wait: Callable[..., None]
) -> None:
    fleet = rabbit_fleet
    # A recovery check for a run that does not exist: harmless, and easy to watch.
    sent = time.time()
    check = fleet.app.send_task("agentfleet.agent.resume", args=("no-such-run", 1, {}), countdown=6)

    def parked_on_the_broker() -> bool:
        found = _queues(vhost).items()
        return any(messages for name, (_, messages) in found if name.startswith("celery_delayed"))

    wait(parked_on_the_broker, 5, "the message to sit in a celery_delayed queue", interval=0.2)
    # Not held by a worker until its ETA, as it would be without native delayed delivery.
    scheduled = fleet.app.control.inspect(timeout=1).scheduled() or {}
    assert not any(scheduled.values())
    wait(lambda: check.state == "SUCCESS", 20, "the delayed task to run")
    assert check.date_done.timestamp() - sent >= 6


def test_sub_second_retries_still_run(rabbit_fleet: Fleet) -> None:
    fleet = rabbit_fleet
    since = time.time()
    run = fleet.client.wait(fleet.client.create_run("[[error:500]] retried").id, timeout=30)
    # Backoff 0.3 s and 0.6 s: each is published as a 1 s delay instead of failing to publish.
    assert run.status == "failed"
    assert run.error is not None
    assert run.error.code == "provider_retries_exhausted"
    calls = fleet.sim.get("/_sim/providers/default/calls", params={"since": since}).json()
    times = calls["times"]
    assert len(times) == 3  # the first call and AGENTFLEET_LLM_MAX_RETRIES=2 retries
    assert all(later - earlier >= 0.95 for earlier, later in itertools.pairwise(times))


#: The example for another service on RabbitMQ (docs/api.md, "From another service"): it
#: declares the queue as we do.
FOREIGN = textwrap.dedent(
    """
    import json, sys
    from celery import Celery
    from kombu import Exchange, Queue

    broker, backend, payload = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    app = Celery("other-service", broker=broker, backend=backend)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    agents = Queue("agents", Exchange("agents", type="topic"), routing_key="agents",
                   queue_arguments={"x-queue-type": "quorum"})
    result = app.send_task("agentfleet.run", kwargs={"request": payload}, queue=agents)
    final = result.get(timeout=60)
    OURS = ("agentfleet", "tasks", "workers", "producer", "ops")
    leaked = sorted(m for m in OURS if m in sys.modules)
    print(json.dumps({"id": result.id, "final": final, "leaked": leaked}))
    """
)


def test_send_task_from_another_service(rabbit_fleet: Fleet) -> None:
    settings = rabbit_fleet.settings
    payload = {"input": 'call calculator {"expression": "7*6"}', "max_steps": 4}
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            FOREIGN,
            settings.broker,
            settings.backend,
            json.dumps(payload),
        ],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    assert reply["leaked"] == []
    assert reply["final"]["status"] == "succeeded"
    assert reply["final"]["result"] == "Results: calculator=42.0"
    assert rabbit_fleet.client.get_run(reply["id"]).status == "succeeded"


def test_tools_worker_killed_mid_load(rabbit_fleet: Fleet, wait: Callable[..., None]) -> None:
    kill_tools_worker_mid_load(rabbit_fleet, wait)


def test_agents_worker_killed_mid_load(rabbit_fleet: Fleet, wait: Callable[..., None]) -> None:
    kill_agents_worker_mid_load(rabbit_fleet, wait)
