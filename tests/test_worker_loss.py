"""Workers SIGKILLed in the middle of runs: every run finishes, every tool call completes once.

A private fleet with short limits (``SHORT_LIMITS``), so that messages held by a dead worker
come back in seconds instead of an hour, and the watchdog resends what no queue holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentfleet.tasks import names
from agentfleet.tasks.toolcall import tool_payload
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

    Runs with three calls (a chord) and runs with one (a chain, agentfleet.tasks.agent.fan_out).
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


def test_tool_that_kills_its_worker_fails_after_max_redeliveries(
    short_fleet: Fleet, wait: Callable[..., None]
) -> None:
    """``crash`` ends its pool process on every delivery: inside a run, through the API and
    through ``send_task``, it runs ``max_redeliveries`` times, then its stored result is the
    ``tool_redelivery_limit`` error, and the same tools worker goes on serving."""
    fleet, limit = short_fleet, short_fleet.settings.limits.max_redeliveries
    keys = ["crash-run", "crash-api", "crash-send"]
    tools_worker = fleet.worker_of("tools")
    run_id = fleet.client.create_run('call crash {"key": "crash-run"}').id
    api_call = fleet.client.create_tool_call("crash", {"key": "crash-api"}).id
    sent = fleet.app.send_task(
        names.TOOL_CALL,
        args=(tool_payload("crash-send-1", "crash", {"key": "crash-send"}),),
        queue="tools",
    )

    run = fleet.client.wait(run_id, timeout=150)
    assert run.status == "succeeded", run.error  # the model saw the error as the tool's result
    assert run.result is not None
    assert "crash=error (tool_redelivery_limit)" in run.result
    assert run.progress.tool_calls_done == 1
    in_run = fleet.client.get_tool_call(f"{run_id}-1-0")
    call = fleet.client.wait_tool_call(api_call, timeout=30)
    by_name = sent.get(timeout=30)
    for result in (in_run.result, call.result, by_name):
        assert result is not None
        assert result["ok"] is False
        assert result["error"]["code"] == "tool_redelivery_limit"
    assert in_run.status == call.status == "failed"
    assert fleet.counts("started", keys) == [limit] * len(keys)

    # Only pool processes died: the worker goes on serving tool calls.
    assert tools_worker.alive()
    after = fleet.client.create_tool_call("calculator", {"expression": "6*7"}).id
    served = fleet.client.wait_tool_call(after, timeout=30)
    assert served.status == "succeeded"
    assert served.result is not None
    assert served.result["output"] == 42


def test_tools_worker_killed_mid_load(short_fleet: Fleet, wait: Callable[..., None]) -> None:
    kill_tools_worker_mid_load(short_fleet, wait)


def test_agents_worker_killed_mid_load(short_fleet: Fleet, wait: Callable[..., None]) -> None:
    kill_agents_worker_mid_load(short_fleet, wait)
