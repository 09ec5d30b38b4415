"""The watchdog sends a run's lost message again, and the run finishes as if nothing happened.

Messages are lost on purpose, deterministically: a run record written with no message behind
it (its publish died with the producer), and tool calls deleted from the ``tools`` queue
before any worker took them (popped by a worker that was SIGKILLed before it recorded them).
Short limits keep the stall allowance in seconds: stall 2 s, sweeps every 0.5 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentfleet.tasks import names
from agentfleet.tasks.llm import resolve_chain
from agentfleet.tasks.models import RunRequest
from agentfleet.tasks.states import RunStatus
from agentfleet.tasks.store import RunStore
from agentfleet.tasks.watchdog import recover
from ops.stack import PoolSpec, Stack, wait_for
from tests.conftest import SHORT_LIMITS, Fleet, private_fleet, with_pools
from tests.test_runs import step_one_applied

SHORT = SHORT_LIMITS | {"AGENTFLEET_STALL_TIMEOUT": "2", "AGENTFLEET_WATCHDOG_INTERVAL": "0.5"}
AGENTS = PoolSpec("agents", "threads", 20)
TOOLS = PoolSpec("tools", "prefork", 3)


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    # No tools worker at first: the tool-call test loses tool messages before one starts.
    stack = Stack(Path(tmp_path_factory.mktemp("watchdog")), env_overrides=SHORT)
    with private_fleet(stack, with_pools(AGENTS), 1) as fleet:
        yield fleet


def test_run_whose_first_message_was_lost_finishes(
    watched: Fleet, wait: Callable[..., None]
) -> None:
    settings = watched.settings
    store = RunStore(watched.redis, settings)
    run_id = "lost-entry-1"
    store.create_run(run_id, RunRequest(input="hello there"), [], resolve_chain(settings, None))
    assert watched.redis.zscore(store.active_key, run_id) is not None

    wait(lambda: watched.client.get_run(run_id).status == "succeeded", 30, "the run")

    run = watched.redis.hgetall(store.run_key(run_id))
    assert run["watchdog_resends"] == "1"
    assert run["result"] == "Echo: hello there"
    # Final runs leave the worklist.
    assert watched.redis.zscore(store.active_key, run_id) is None


def test_lost_tool_call_that_used_up_its_deliveries_fails_instead_of_running_again(
    watched: Fleet, wait: Callable[..., None]
) -> None:
    key = "used-up"
    run_id = watched.client.create_run(f'call record_sleep {{"key": "{key}", "seconds": 0.1}}').id
    store = RunStore(watched.redis, watched.settings)
    call_id = f"{run_id}-1-0"

    # No tools worker yet: the call sits in the queue, then is lost. Each delivery it had
    # began it (agentfleet.tasks.scripts.BEGIN_TOOL) and lost its worker.
    wait(lambda: watched.redis.llen("tools") == 1, 20, "the tool call queued")
    watched.redis.delete("tools")
    limit = watched.settings.limits.max_redeliveries
    begun = {"id": call_id, "name": "record_sleep", "run_id": run_id, "attempts": limit}
    watched.redis.hset(store.tool_key(call_id), mapping=begun | {"status": "running"})

    run = watched.client.wait(run_id, timeout=60)
    assert run.status == "succeeded", run.error  # the model saw the error as the tool's result
    assert run.result is not None
    assert "record_sleep=error (tool_redelivery_limit)" in run.result
    assert run.progress.tool_calls_done == 1
    assert watched.redis.llen("tools") == 0  # not sent again
    assert watched.redis.get(f"test:started:{key}") is None
    call = watched.client.get_tool_call(call_id)
    assert call.status == "failed"
    assert call.result is not None
    assert call.result["error"]["code"] == "tool_redelivery_limit"


def test_tool_calls_lost_from_the_queue_run_once_and_the_run_finishes(
    watched: Fleet, wait: Callable[..., None]
) -> None:
    keys = [f"lost-{i}" for i in range(3)]
    prompt = " ".join(f'call record_sleep {{"key": "{k}", "seconds": 0.2}}' for k in keys)
    run_id = watched.client.create_run(prompt).id
    store = RunStore(watched.redis, watched.settings)

    # Step 1 dispatched its chord; the three tool calls sit in the queue with no worker.
    wait(lambda: watched.redis.llen("tools") == 3, 20, "the tool calls queued")
    watched.redis.delete("tools")  # lost: no queue and no worker has them

    watched.stack.start_worker(TOOLS)
    watched.stack.wait_workers(watched.app, 2)
    wait(lambda: watched.client.get_run(run_id).status == "succeeded", 60, "the run")

    run = watched.redis.hgetall(store.run_key(run_id))
    # One resend of the tool calls, one of the step after them (the lost chord never fires).
    assert int(run["watchdog_resends"]) >= 2
    started = watched.redis.mget([f"test:started:{k}" for k in keys])
    completed = watched.redis.mget([f"test:completed:{k}" for k in keys])
    assert started == ["1", "1", "1"]
    assert completed == ["1", "1", "1"]
    messages = store.messages(run_id)
    tool_messages = [m for m in messages if m["role"] == "tool"]
    assert len(tool_messages) == 3
    assert all(json.loads(m["content"])["key"] in keys for m in tool_messages)
    assert run["status"] == "succeeded"
    assert run["tools_done"] == "3"


def test_overdue_run_held_by_a_worker_is_left_alone(watched: Fleet) -> None:
    """A run whose step lease is held is running (or its worker's lease is lapsing)."""
    settings = watched.settings
    store = RunStore(watched.redis, settings)
    run_id = "held-1"
    store.create_run(run_id, RunRequest(input="hi"), [], resolve_chain(settings, None))
    watched.redis.set(f"{store.run_key(run_id)}:lease", "someone-else", px=3000)
    # Overdue now, but held: the sweep must push its due time past the lease, not resend.
    watched.redis.zadd(store.active_key, {run_id: 0})
    wait_for(lambda: float(watched.redis.zscore(store.active_key, run_id) or 0) > 0, 10, "a sweep")
    assert watched.redis.hget(store.run_key(run_id), "watchdog_resends") is None
    assert watched.redis.hget(store.run_key(run_id), "status") == "queued"
    store.forget(run_id)
    store.delete_run(run_id)


def test_a_run_waiting_for_its_tenant_is_resent_only_if_its_start_was_lost(
    watched: Fleet,
) -> None:
    # Keys of their own: the fleet's workers and watchdog never see these runs.
    settings = watched.settings.model_copy(
        update={"key_prefix": "wdcap", "tenant_limits": {"capped": 1}}
    )
    store = RunStore(watched.redis, settings)
    chain = resolve_chain(settings, None)
    for run_id in ("cap-a", "cap-b"):
        assert store.create_run(run_id, RunRequest(input="hi"), [], chain, tenant="capped")
    first = store.begin_step("cap-a", 1)
    assert first.outcome == "ok"
    assert store.begin_step("cap-b", 1).outcome == "throttled"

    # The tenant is at its cap: the run ahead of it will start it; nothing is sent.
    assert recover(watched.app, settings, store, "cap-b").action == "waiting"
    assert watched.redis.hget(store.run_key("cap-b"), "watchdog_resends") is None
    assert watched.redis.zscore(store.active_key, "cap-b") > time.time()

    # The run ahead finishes, and the message that would start the waiting one is lost.
    finished = store.finish_step("cap-a", 1, first.token, status=RunStatus.SUCCEEDED, result="x")
    assert finished.kick == "cap-b"
    assert recover(watched.app, settings, store, "cap-b").action == "entry"


def test_a_step_handed_results_of_a_rolled_back_answer_gets_the_current_ones(
    watched: Fleet, wait: Callable[..., None]
) -> None:
    """The state a crash of Redis leaves: the answer of step 1 was rolled back and given again,
    while a worker ran the first answer's call, stored its result and hands it to step 2."""
    if not any(p.name.startswith("worker-tools") and p.alive() for p in watched.stack.procs):
        watched.stack.start_worker(TOOLS)
        watched.stack.wait_workers(watched.app, 2)
    store = RunStore(watched.redis, watched.settings)
    run_id, call_id = "rolled-back-results-1", "rolled-back-results-1-1-0"
    gen = step_one_applied(store, run_id, "a b")
    stale = {"id": call_id, "name": "text_stats", "ok": True, "output": {"words": 99}}
    stale |= {"model_call_id": "call_1", "gen": "rolled-back"}
    watched.redis.hset(
        store.tool_key(call_id),
        mapping={
            "id": call_id,
            "result": json.dumps(stale),
            "gen": "rolled-back",
            "status": "succeeded",
        },
    )
    watched.app.send_task(names.AGENT_STEP, args=([stale], run_id, 2), task_id=run_id)

    run = watched.client.wait(run_id, timeout=60)
    assert run.status == "succeeded", run.error
    assert run.result == 'Results: text_stats={"characters": 3, "words": 2, "lines": 1}'
    assert [m["role"] for m in store.messages(run_id)] == ["user", "assistant", "tool", "assistant"]
    assert watched.redis.hget(store.tool_key(call_id), "gen") == gen
