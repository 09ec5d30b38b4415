"""Workers SIGKILLed in the middle of runs: every run finishes, every tool call completes once.

A private fleet with short limits (``SHORT_LIMITS``), so that messages held by a dead worker
come back in seconds instead of an hour, and the watchdog resends what no queue holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ops.stack import PoolSpec, Stack
from tests.conftest import SHORT_LIMITS, Fleet, private_fleet, with_pools

AGENTS = PoolSpec("agents", "threads", 50)
TOOLS = PoolSpec("tools", "prefork", 4)
BATCH = PoolSpec("batch", "prefork", 1)


@pytest.fixture(scope="module")
def short_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    stack = Stack(Path(tmp_path_factory.mktemp("loss")), env_overrides=SHORT_LIMITS)
    with private_fleet(stack, with_pools(AGENTS, TOOLS, BATCH), 3) as fleet:
        yield fleet


def kill_tools_worker_mid_load(fleet: Fleet, wait: Callable[..., None]) -> None:
    """SIGKILL the tools worker while tools run: every run succeeds, every tool runs once.

    Runs with three calls (a chord) and runs with one (a chain, tasks.agent.fan_out).
    """
    calls_per_run = [1] * 4 + [3] * 8  # single calls first: the kill lands among them
    keys_of = [[f"t{run}-{i}" for i in range(n)] for run, n in enumerate(calls_per_run)]
    keys = [key for run_keys in keys_of for key in run_keys]
    run_ids = [
        fleet.client.create_run(
            " ".join(f'call record_sleep {{"key": "{k}", "seconds": 1.5}}' for k in run_keys)
        ).id
        for run_keys in keys_of
    ]
    pairs = zip(run_ids, calls_per_run, strict=True)
    call_ids = [f"{run_id}-1-{i}" for run_id, n in pairs for i in range(n)]

    def mid_execution() -> bool:
        # Tools are sleeping, and every tool that finished has its result stored: the kill
        # lands inside tool bodies, not between a tool's own side effect and the store.
        started, completed = fleet.counts("started", keys), fleet.counts("completed", keys)
        stored = [bool(fleet.redis.hexists(f"af:tool:{c}", "result")) for c in call_ids]
        return sum(started) - sum(completed) >= 2 and all(
            s for s, done in zip(stored, completed, strict=True) if done
        )

    # Kill the tools worker (main process and pool children) while tools are executing.
    wait(mid_execution, 30, "tools to be in the middle of running")
    victim = fleet.worker_of("tools")
    fleet.stack.kill(victim)
    victim.popen.wait(timeout=10)
    interrupted = sum(fleet.counts("started", keys)) - sum(fleet.counts("completed", keys))
    assert interrupted > 0  # the kill really landed mid-execution
    fleet.stack.start_worker(TOOLS)

    runs = [fleet.client.wait(run_id, timeout=120) for run_id in run_ids]
    assert [r.status for r in runs] == ["succeeded"] * len(run_ids)
    assert [r.progress.tool_calls_done for r in runs] == calls_per_run
    assert fleet.counts("completed", keys) == [1] * len(keys)


def kill_agents_worker_mid_load(fleet: Fleet, wait: Callable[..., None]) -> None:
    """SIGKILL the agents worker during LLM calls: every run succeeds, each step applied once."""
    keys = [f"a{run}" for run in range(12)]
    run_ids = [
        fleet.client.create_run(
            f'[[latency:1.5]] call record_sleep {{"key": "a{run}", "seconds": 0.2}}'
        ).id
        for run in range(12)
    ]
    # Kill the agents worker while LLM calls are in flight.
    wait(lambda: fleet.sim_stats()["in_flight"] >= 5, 30, "LLM calls in flight")
    victim = fleet.worker_of("agents")
    fleet.stack.kill(victim)
    victim.popen.wait(timeout=10)
    fleet.stack.start_worker(AGENTS)

    runs = [fleet.client.wait(run_id, timeout=120) for run_id in run_ids]
    assert [r.status for r in runs] == ["succeeded"] * 12
    assert all(r.usage.llm_calls == 2 for r in runs)  # applied once each, whatever was lost
    assert fleet.counts("completed", keys) == [1] * len(keys)


def test_tools_worker_killed_mid_load(short_fleet: Fleet, wait: Callable[..., None]) -> None:
    kill_tools_worker_mid_load(short_fleet, wait)


def test_agents_worker_killed_mid_load(short_fleet: Fleet, wait: Callable[..., None]) -> None:
    kill_agents_worker_mid_load(short_fleet, wait)
