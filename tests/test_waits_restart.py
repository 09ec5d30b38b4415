"""A run waiting for a person survives a restart of every worker and of Redis (append-only
file): nothing of the wait lives in a worker, a message or memory, only in its record."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ops.stack import Stack
from tests.conftest import SHORT_LIMITS, Fleet, private_fleet
from tests.test_waits import TWO_DEPLOYS
from tests.test_worker_loss import AGENTS, BATCH, TOOLS

POOLS = (AGENTS, TOOLS, BATCH)


@pytest.fixture(scope="module")
def durable_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    def start(stack: Stack) -> None:
        stack.start_redis(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
        stack.start_fleet(pools=POOLS)  # Redis above is kept

    stack = Stack(Path(tmp_path_factory.mktemp("waits")), env_overrides=SHORT_LIMITS)
    with private_fleet(stack, start, len(POOLS)) as fleet:
        yield fleet


def test_a_waiting_run_survives_every_worker_and_redis_restarting(
    durable_fleet: Fleet, wait: Callable[..., None]
) -> None:
    fleet, stack = durable_fleet, durable_fleet.stack
    deploys = fleet.client.create_run(TWO_DEPLOYS, tools=["deploy"]).id
    asks = fleet.client.create_run(
        'call ask_human {"question": "Ship it?"}', tools=["ask_human"]
    ).id
    for run_id in (deploys, asks):
        wait(lambda r=run_id: fleet.client.get_run(r).status == "waiting", 30, "the waits")

    workers = [p for p in stack.procs if p.name.startswith("worker") and p.alive()]
    assert len(workers) == len(POOLS)
    for proc in workers:
        stack.kill(proc)  # SIGKILL: nothing is handed back on the way out
        proc.popen.wait(timeout=20)
        stack.procs.remove(proc)
    stack.restart_redis()
    for spec in POOLS:
        stack.start_worker(spec)
    stack.wait_workers(fleet.app, len(POOLS))

    run = fleet.client.get_run(deploys)
    assert run.status == "waiting"
    assert run.waiting is not None
    first, second = run.waiting.pending or []
    fleet.client.decide(
        deploys,
        [
            {"call_id": first.id, "approve": True},
            {"call_id": second.id, "approve": False, "message": "later"},
        ],
    )
    fleet.client.answer(asks, "yes")
    done = fleet.client.wait(deploys, timeout=60)
    assert done.status == "succeeded", done
    assert done.result == (
        'Results: deploy="deployed api 1.0"; deploy=error (denied): denied by the reviewer: later'
    )
    assert fleet.redis.get("test:deploy:api:1.0") == "1"  # ran once
    answered = fleet.client.wait(asks, timeout=60)
    assert answered.result == 'Results: ask_human="yes"'
