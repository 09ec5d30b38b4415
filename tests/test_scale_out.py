"""Scaling out: three agents workers with distinct node names share the queue."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.stack import PoolSpec, Stack
from tests.conftest import Fleet


@pytest.fixture(scope="module")
def three_agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    stack = Stack(Path(tmp_path_factory.mktemp("scale")))
    try:
        stack.start_redis()
        stack.start_simulator()
        for _ in range(3):
            stack.start_worker(PoolSpec("agents", "threads", 10))
        stack.start_worker(PoolSpec("tools", "prefork", 2))
        stack.start_api()
        fleet = Fleet(stack)
        nodes = stack.wait_workers(fleet.app, 4)
        assert len({n for n in nodes if n.startswith("agents-")}) == 3
        yield fleet
        fleet.close()
    finally:
        stack.stop()


def test_work_spreads_over_three_workers(three_agents: Fleet) -> None:
    fleet = three_agents
    ids = [
        fleet.client.create_run(f'[[latency:0.3]] call text_stats {{"text": "run {i}"}}').id
        for i in range(60)
    ]
    runs = [fleet.client.wait(i, timeout=120) for i in ids]
    assert [r.status for r in runs] == ["succeeded"] * 60
    by_worker = Counter(r.worker for r in runs)
    assert set(by_worker) == {w for w in by_worker if w and w.startswith("agents-")}
    assert len(by_worker) == 3, by_worker  # every node took a share of the work
