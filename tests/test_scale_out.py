"""Scaling out: three agents workers with distinct node names share the queue, and losing one
of them mid-load loses no run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ops.stack import PoolSpec, Stack
from tests.conftest import SHORT_LIMITS, Fleet, private_fleet, with_pools

AGENTS = PoolSpec("agents", "threads", 10)


@pytest.fixture(scope="module")
def three_agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    stack = Stack(Path(tmp_path_factory.mktemp("scale")), env_overrides=SHORT_LIMITS)
    start = with_pools(AGENTS, AGENTS, AGENTS, PoolSpec("tools", "prefork", 2))
    with private_fleet(stack, start, 4) as fleet:
        nodes = stack.wait_workers(fleet.app, 4)
        assert len({n for n in nodes if n.startswith("agents-")}) == 3
        yield fleet


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


def test_sigkill_of_one_of_three_loses_no_run(
    three_agents: Fleet, wait: Callable[..., None]
) -> None:
    fleet = three_agents
    keys = [f"s{i}" for i in range(60)]
    ids = [
        fleet.client.create_run(
            f'[[latency:0.8]] call record_sleep {{"key": "{key}", "seconds": 0.1}}'
        ).id
        for key in keys
    ]
    # The victim is killed with LLM calls of its own in flight, and the others carry on alone.
    wait(lambda: fleet.sim_stats()["in_flight"] >= 15, 30, "LLM calls in flight")
    victim = fleet.worker_of("agents")
    fleet.stack.kill(victim)
    victim.popen.wait(timeout=10)

    runs = [fleet.client.wait(i, timeout=150) for i in ids]
    assert [r.status for r in runs] == ["succeeded"] * 60
    assert all(r.usage.llm_calls == 2 for r in runs)  # each step applied once
    assert fleet.counts("completed", keys) == [1] * 60  # each tool call ran once
    survivors = {r.worker for r in runs}
    assert len(survivors) >= 2
