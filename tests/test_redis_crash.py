"""A crash of the Redis host under load: what a 202 promises, and what a run may build on.

A crash is SIGKILL plus the loss of what the disk had not made durable. With ``appendfsync
everysec`` that is up to the last second of the append-only file: the test notes the size of
the AOF's incremental file while runs are mid-flight, lets them progress, kills
``redis-server``, cuts the file back to that size (Redis loads a truncated AOF, dropping an
incomplete transaction) and starts it again on the same directory and port. Workers still
hold what they read before the crash (a tool running, a step's tool results), so the run store
must notice state that the crash rolled back instead of building on it.

With ``appendfsync always`` (``ops.stack.DURABLE_REDIS``) Redis fsyncs before it answers, so
everything acknowledged is on disk: a kill loses nothing that was acknowledged, and every run
answered 202 is there after it. Workers and the API warn at start-up unless their Redis says so.

Short limits (``SHORT_LIMITS``): the watchdog resends what the crash lost within seconds. The
last tests make the state a crash leaves directly, and check that each transition refuses it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agentfleet.tasks import keys
from agentfleet.tasks.errors import RolledBack
from agentfleet.tasks.llm import resolve_chain
from agentfleet.tasks.metrics import step_fields
from agentfleet.tasks.models import RunRequest
from agentfleet.tasks.redisconn import durability_gap
from agentfleet.tasks.states import RunStatus
from agentfleet.tasks.store import RunStore, StepAnswer
from ops.stack import DURABLE_REDIS, PoolSpec, Proc, Stack, StackError, wait_for
from tests.conftest import SHORT_LIMITS, Fleet, private_fleet
from tests.test_worker_loss import AGENTS, BATCH

EVERYSEC = ["--appendonly", "yes", "--appendfsync", "everysec"]
ALWAYS = list(DURABLE_REDIS)
#: No rewrite during the test: the incremental file must be the one the test cuts.
NO_REWRITE = ["--auto-aof-rewrite-percentage", "0"]
TOOLS_12 = PoolSpec("tools", "prefork", 12)
RUNS = 20
#: Each run asks for a 1.5 s tool in three steps, then answers: the crash lands while tools
#: run (they finish after Redis is back) and while steps apply their answers.
ROUNDS = 3


def _start_with(aof: list[str]) -> Callable[[Stack], None]:
    def start(stack: Stack) -> None:
        stack.start_redis(extra_args=[*aof, *NO_REWRITE])
        stack.start_fleet(pools=(AGENTS, TOOLS_12, BATCH))  # Redis above is kept

    return start


@contextlib.contextmanager
def _fleet(tmp: Path, aof: list[str]) -> Iterator[Fleet]:
    stack = Stack(tmp, env_overrides=SHORT_LIMITS)
    with private_fleet(stack, _start_with(aof), 3) as fleet:
        yield fleet


@pytest.fixture
def everysec_fleet(tmp_path: Path) -> Iterator[Fleet]:
    with _fleet(tmp_path, EVERYSEC) as fleet:
        yield fleet


@pytest.fixture
def always_fleet(tmp_path: Path) -> Iterator[Fleet]:
    with _fleet(tmp_path, ALWAYS) as fleet:
        yield fleet


def _incr_file(stack: Stack) -> Path:
    """The AOF's incremental file (Redis 7 keeps a base and increments in appenddirname)."""
    (found,) = (stack.workdir / "redis" / "appendonlydir").glob("*.incr.aof")
    return found


def _crash_redis(stack: Stack, keep_bytes: int | None = None) -> None:
    """SIGKILL redis-server, keep only ``keep_bytes`` of its AOF increment (what the disk had
    made durable), start it again on the same directory and port."""
    victim = next(p for p in stack.procs if p.name == "redis" and p.alive())
    stack.kill(victim, signal.SIGKILL)
    victim.popen.wait(timeout=10)
    if keep_bytes is not None:
        with _incr_file(stack).open("r+b") as aof:
            aof.truncate(keep_bytes)
    revived: Proc = stack.spawn("redis", [str(arg) for arg in victim.popen.args])
    # In the dead one's place, so that the stack still stops Redis after the workers.
    stack.procs.remove(revived)
    stack.procs[stack.procs.index(victim)] = revived
    client = redis.Redis.from_url(stack.redis_url or "", socket_connect_timeout=1)
    wait_for(lambda: bool(client.ping()), 30, "redis-server to come back")
    client.close()


def _durability_warnings(stack: Stack) -> dict[str, int]:
    """How many times each worker and API process warned that its Redis is not durable."""
    return {
        p.name: p.log.read_text().count("the run store's Redis has appendfsync everysec")
        for p in stack.procs
        if p.name.startswith(("worker-", "api-"))
    }


def _prompt(i: int) -> str:
    return f'[[rounds:{ROUNDS}]] [[latency:0.3]] run {i}: call wait {{"seconds": 1.5}}'


def transcript_problems(messages: list[dict[str, Any]]) -> list[str]:
    """What makes a transcript one a strict provider would refuse: a tool result that answers
    no tool call of the nearest assistant message before it, or a call answered other than
    exactly once."""
    problems: list[str] = []
    asked: list[str] | None = None
    answered: list[str] = []

    def close(at: int) -> None:
        if asked is not None and Counter(answered) != Counter(asked):
            problems.append(f"before message {at}: calls {asked} answered by {answered}")

    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            close(index)
            asked = [call["id"] for call in message.get("tool_calls") or []]
            answered = []
        elif message["role"] == "tool":
            call_id = message["tool_call_id"]
            if asked is None or call_id not in asked:
                problems.append(f"message {index}: a result for {call_id}, which was not asked")
            answered.append(call_id)
    if asked:
        problems.append("the last assistant message asks for tools")
    return problems


def _records(fleet: Fleet, ids: list[str]) -> list[dict[str, str]]:
    pipe = fleet.redis.pipeline(transaction=False)
    for run_id in ids:
        pipe.hgetall(f"af:run:{run_id}")
    return list(pipe.execute())


def _transcript(fleet: Fleet, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(m) for m in fleet.redis.lrange(f"af:run:{run_id}:messages", 0, -1)]


def _assert_all_succeed_consistently(
    fleet: Fleet, ids: list[str], wait: Callable[..., None]
) -> None:
    # Long enough for the watchdog's resends to back off four times (5 + 10 + 20 + 40 s with
    # SHORT_LIMITS) on a loaded machine; a run that is built consistently finishes well before.
    with contextlib.suppress(StackError):
        wait(
            lambda: all(r.get("status") == "succeeded" for r in _records(fleet, ids)),
            180,
            "every run to succeed",
            interval=0.5,
        )
    statuses = Counter(r.get("status") for r in _records(fleet, ids))
    problems = {i: p for i in ids if (p := transcript_problems(_transcript(fleet, i)))}
    assert not problems, (statuses, problems)
    assert statuses == Counter({"succeeded": len(ids)}), statuses


def test_a_crash_never_leaves_a_run_built_on_rolled_back_state(
    everysec_fleet: Fleet, wait: Callable[..., None]
) -> None:
    fleet, stack = everysec_fleet, everysec_fleet.stack
    # Each process said at start-up what a crash may cost with this Redis.
    wait(lambda: set(_durability_warnings(stack).values()) == {1}, 10, "durability warnings")
    ids = [fleet.client.create_run(_prompt(i)).id for i in range(RUNS)]

    def applied() -> int:
        return sum(int(r.get("applied_step") or 0) for r in _records(fleet, ids))

    # Every run under way, none finished: steps apply answers while tools run.
    wait(lambda: applied() >= RUNS, 60, "every run to apply a step", interval=0.05)
    durable, before = _incr_file(stack).stat().st_size, applied()
    # The lost tail holds answers of steps, and the tool calls they dispatched start.
    wait(lambda: applied() >= before + 4, 30, "steps to apply in the lost tail", interval=0.02)
    at_crash = {r["id"]: int(r["applied_step"]) for r in _records(fleet, ids)}
    _crash_redis(stack, keep_bytes=durable)
    after = {r["id"]: int(r["applied_step"]) for r in _records(fleet, ids) if r}
    rolled_back = [i for i, n in after.items() if n < at_crash[i]]
    assert rolled_back, "the crash lost no step's answer"

    # Every run whose record survived finishes, and none built on what the crash lost.
    _assert_all_succeed_consistently(fleet, list(after), wait)


def test_every_accepted_run_survives_a_crash_with_appendfsync_always(
    always_fleet: Fleet, wait: Callable[..., None]
) -> None:
    fleet, stack = always_fleet, always_fleet.stack
    assert fleet.redis.config_get("appendfsync") == {"appendfsync": "always"}
    assert set(_durability_warnings(stack).values()) == {0}, _durability_warnings(stack)
    ids = [fleet.client.create_run(_prompt(i)).id for i in range(RUNS)]
    # The crash right after the last 202, with steps and tools under way. Redis answered each
    # write after its fsync, so the disk holds all of them: nothing is cut from the file.
    _crash_redis(stack)

    assert [r.get("id") for r in _records(fleet, ids)] == ids
    _assert_all_succeed_consistently(fleet, ids, wait)


# --- each transition refuses what a crash rolled back (the state a crash leaves, made directly)


def _store(fleet: Fleet) -> RunStore:
    # Keys of their own: the fleet's workers and watchdog never see these runs.
    return RunStore(fleet.redis, fleet.settings.model_copy(update={"key_prefix": "rbk"}))


def _answer(store: RunStore, after: str = "", call: str = "call_1") -> StepAnswer:
    """An answer asking for one ``text_stats`` call, built on generation ``after``."""
    target = resolve_chain(store.settings, None)[0]
    asked = {"id": call, "type": "function", "function": {"name": "text_stats", "arguments": "{}"}}
    message = {"role": "assistant", "content": None, "tool_calls": [asked]}
    return StepAnswer([message], 10, 5, 1, target, step_fields(0.01, target), after=after)


def _dispatched(store: RunStore, run_id: str) -> str:
    """A run whose step 1 answer (one tool call) is applied and dispatched; its generation."""
    chain = resolve_chain(store.settings, None)
    assert store.create_run(run_id, RunRequest(input="hi"), ["text_stats"], chain)
    claim = store.begin_step(run_id, 1)
    assert store.apply_step(run_id, 1, claim.token, _answer(store)) == 1
    store.finish_step(run_id, 1, claim.token, gen=claim.token)
    return claim.token


def _due_now(store: RunStore, run_id: str) -> bool:
    return float(store.redis.zscore(store.active_key, run_id) or "inf") <= time.time()


def _result(run_id: str, gen: str) -> dict[str, Any]:
    return {"id": f"{run_id}-1-0", "ok": True, "output": 1, "model_call_id": "call_1", "gen": gen}


def test_a_step_whose_predecessor_was_rolled_back_runs_nothing(fleet: Fleet) -> None:
    store = _store(fleet)
    # Step 2 arrives (its tool results in hand) at a run whose step 1 answer is gone.
    chain = resolve_chain(store.settings, None)
    assert store.create_run("rbk-step", RunRequest(input="hi"), [], chain)
    assert store.begin_step("rbk-step", 2).outcome == "rolled_back"
    assert not store.holds_lease("rbk-step")
    assert _due_now(store, "rbk-step")
    assert store.get_run("rbk-step").status == RunStatus.QUEUED


def test_an_answer_built_on_a_rolled_back_answer_is_refused(fleet: Fleet) -> None:
    store = _store(fleet)
    old = _dispatched(store, "rbk-apply")
    claim = store.begin_step("rbk-apply", 2)
    assert claim.outcome == "ok"
    transcript = store.messages("rbk-apply")
    # While step 2 waits on the model, a crash rolls step 1 back and it answers again.
    store.redis.hset(store.run_key("rbk-apply"), "gen:1", "answered-again")
    with pytest.raises(RolledBack):
        store.apply_step("rbk-apply", 2, claim.token, _answer(store, after=old, call="call_2"))
    assert store.messages("rbk-apply") == transcript
    assert not store.holds_lease("rbk-apply")
    assert store.get_run("rbk-apply").fields[keys.deliveries_field(2)] == "0"
    assert _due_now(store, "rbk-apply")
    # Nor does a step mark dispatched, or end the run with, an answer that is not the applied one.
    again = store.begin_step("rbk-apply", 2)
    with pytest.raises(RolledBack):
        store.finish_step("rbk-apply", 1, again.token, gen=old)
    with pytest.raises(RolledBack):
        store.finish_step("rbk-apply", 1, again.token, status=RunStatus.SUCCEEDED, gen=old)
    assert store.get_run("rbk-apply").status == RunStatus.RUNNING


def test_tool_calls_and_results_of_a_rolled_back_answer_are_refused(fleet: Fleet) -> None:
    store = _store(fleet)
    run_id, call_id = "rbk-tool", "rbk-tool-1-0"
    gen = _dispatched(store, run_id)
    # A worker still holds a call of an answer a crash rolled back: it does not run.
    assert store.begin_tool(call_id, "text_stats", "{}", run_id, 5, 1, gen="old").outcome == "stale"
    # Nor is its result kept if it ran.
    claim = store.begin_tool(call_id, "text_stats", "{}", run_id, 5, 1, gen=gen)
    assert store.complete_tool(call_id, claim.token, _result(run_id, "old"), run_id, 1) == (
        None,
        "",
    )
    assert store.get_tool_call(call_id).result is None
    # A result stored while the answer was gone, before step 1 answered again, is replaced.
    store.redis.hdel(store.run_key(run_id), "gen:1")
    store.complete_tool(call_id, claim.token, _result(run_id, "old"), run_id, 1)
    store.redis.hset(store.run_key(run_id), "gen:1", gen)
    assert store.get_run(run_id).tools_done == 1
    again = store.begin_tool(call_id, "text_stats", "{}", run_id, 5, 1, gen=gen)
    assert again.outcome == "ok"
    assert store.get_run(run_id).tools_done == 0
    stored, _ = store.complete_tool(call_id, again.token, _result(run_id, gen), run_id, 1)
    assert stored == _result(run_id, gen)
    done = store.begin_tool(call_id, "text_stats", "{}", run_id, 5, 1, gen=gen)
    assert (done.outcome, done.result) == ("done", stored)


@pytest.mark.parametrize(
    ("args", "gap"),
    [
        (["--appendonly", "no"], "appendonly no: "),
        (EVERYSEC, "appendfsync everysec: "),
        (ALWAYS, None),
        # Managed services often refuse CONFIG: then nothing is known, and nothing is said.
        ([*EVERYSEC, "--rename-command", "CONFIG", ""], None),
    ],
    ids=["no-aof", "everysec", "always", "config-refused"],
)
def test_what_a_crash_of_the_redis_host_may_lose_is_told(
    tmp_path: Path, args: list[str], gap: str | None
) -> None:
    with Stack(tmp_path) as stack:
        client = redis.Redis.from_url(stack.start_redis(extra_args=args), decode_responses=True)
        found = durability_gap(client)
        client.close()
    assert (found is None) == (gap is None), found
    assert (found or "").startswith(gap or ""), found
