"""Scaling out: three agents workers with distinct node names share the queue, and losing one
mid-load loses no run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ops.stack import PoolSpec, Stack
from tests.conftest import Fleet
from tests.test_worker_loss import SHORT


@pytest.fixture(scope="module")
def three_agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    stack = Stack(Path(tmp_path_factory.mktemp("scale")), env_overrides=SHORT)
    try:
        stack.start_redis()
        stack.start_simulator()
        for _ in range(3):
            stack.start_worker(PoolSpec("agents", "threads", 20))
        stack.start_worker(PoolSpec("tools", "prefork", 2))
        stack.start_worker(PoolSpec("batch", "prefork", 1))
        stack.start_api()
        fleet = Fleet(stack)
        nodes = stack.wait_workers(fleet.app, 5)
        assert len({n for n in nodes if n.startswith("agents-")}) == 3
        yield fleet
        fleet.close()
    finally:
        stack.stop()


def test_work_spreads_over_three_workers_and_survives_losing_one(
    three_agents: Fleet, wait: Callable[..., None]
) -> None:
    fleet = three_agents
    ids = [
        fleet.client.create_run(f'[[latency:0.5]] call text_stats {{"text": "run {i}"}}').id
        for i in range(60)
    ]

    # Once every worker has applied some steps, SIGKILL one of them mid-load.
    def all_busy() -> bool:
        workers = {fleet.client.get_run(i).worker for i in ids[:30]} - {None}
        return len(workers) == 3

    wait(all_busy, 60, "all three agents workers to take work", interval=0.2)
    victim = next(p for p in fleet.stack.procs if p.name.startswith("worker-agents"))
    fleet.stack.kill(victim)
    victim.popen.wait(timeout=10)

    runs = [fleet.client.wait(i, timeout=180) for i in ids]
    assert [r.status for r in runs] == ["succeeded"] * 60
    assert all(r.usage.llm_calls == 2 for r in runs)
    by_worker = Counter(r.worker for r in runs)
    assert len(by_worker) >= 2  # the survivors finished what the lost worker held
    assert sum(by_worker.values()) == 60
