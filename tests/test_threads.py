"""Conversation threads: history that starts each run, one run at a time, and the policies for
a run that comes while another is unfinished (enqueue, reject, interrupt)."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest

from agentfleet.client import Conflict, NotFound
from agentfleet.tasks import keys
from agentfleet.tasks.llm import Target
from agentfleet.tasks.metrics import step_fields
from agentfleet.tasks.models import RunRequest
from agentfleet.tasks.states import RunStatus
from agentfleet.tasks.store import RunStore, StepAnswer
from tests.conftest import Fleet


def _thread() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _messages(fleet: Fleet, run_id: str) -> list[dict[str, Any]]:
    raw = fleet.redis.lrange(keys.run_messages(fleet.settings.redis.key_prefix, run_id), 0, -1)
    return [json.loads(m) for m in raw]


def _queued(fleet: Fleet) -> tuple[set[str], int]:
    return fleet.run_keys(), sum(int(fleet.redis.llen(q)) for q in ("agents", "tools", "batch"))


def _time(value: str | None) -> float:
    assert value is not None
    return datetime.fromisoformat(value).timestamp()


def test_each_run_of_a_thread_starts_with_the_turns_before_it(fleet: Fleet) -> None:
    thread = _thread()
    inputs = ["My name is Ada.", "I live in Paris.", "Where do I live?"]
    runs = [
        fleet.client.run(text, thread_id=thread, system="Be brief.", timeout=60) for text in inputs
    ]
    assert [r.thread_id for r in runs] == [thread] * 3
    third = _messages(fleet, runs[2].id)
    # The system prompt first, then each earlier turn (input and answer), then the input.
    assert [m["role"] for m in third] == ["system"] + ["user", "assistant"] * 3
    assert [m["content"] for m in third if m["role"] == "user"] == inputs
    assert third[2]["content"] == runs[0].result
    assert third[4]["content"] == runs[1].result
    view = fleet.client.get_thread(thread)
    assert view.turns == 3
    assert view.messages_total == 6
    assert [m["content"] for m in view.messages[::2]] == inputs
    assert view.running is None
    assert view.waiting == []
    assert [r.id for r in view.runs] == [r.id for r in reversed(runs)]
    assert {r.status for r in view.runs} == {"succeeded"}
    page = fleet.client.get_thread(thread, offset=4, limit=1)
    assert page.messages == [{"role": "user", "content": inputs[2]}]
    assert page.messages_total == 6


def test_concurrent_runs_on_a_thread_run_one_after_another_in_order(
    fleet: Fleet, wait: Callable[..., None]
) -> None:
    thread = _thread()

    def post(index: int) -> str:
        prompt = f"turn {index} [[latency:0.2]]"
        return fleet.client.create_run(prompt, thread_id=thread).id

    with ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(post, range(10)))
    wait(lambda: fleet.client.get_thread(thread).turns == 10, 120, "ten turns on the thread")
    runs = [fleet.client.get_run(i) for i in ids]
    assert {r.status for r in runs} == {"succeeded"}
    # The order the thread accepted them in (not the order the POSTs were sent).
    order = [r.id for r in reversed(fleet.client.get_thread(thread).runs)]
    by_id = {r.id: r for r in runs}
    spans = [(_time(by_id[i].started_at), _time(by_id[i].finished_at)) for i in order]
    for (_, finished), (started, _) in itertools.pairwise(spans):
        assert started >= finished, spans  # never two at once
    history = fleet.client.get_thread(thread, limit=100).messages
    inputs = [m["content"] for m in history if m["role"] == "user"]
    # The history has each run's input (the one before its answer), in the order they ran.
    assert inputs == [_messages(fleet, i)[-2]["content"] for i in order]


def test_reject_refuses_a_run_while_one_is_unfinished(
    fleet: Fleet, wait: Callable[..., None]
) -> None:
    thread = _thread()
    slow = fleet.client.create_run("slow [[latency:3]]", thread_id=thread)
    wait(lambda: fleet.client.get_run(slow.id).status == "running", 30, "the first run to start")
    before = _queued(fleet)
    response = fleet.http.post(
        "/v1/runs", json={"input": "next", "thread_id": thread, "thread_policy": "reject"}
    )
    assert response.status_code == 409, response.text
    assert "unfinished run" in response.json()["detail"]
    assert fleet.run_keys() == before[0]
    fleet.client.wait(slow.id, timeout=60)
    # Free again: the same request is taken.
    later = fleet.client.run("next", thread_id=thread, thread_policy="reject", timeout=60)
    assert later.status == "succeeded"


def test_interrupt_cancels_the_runs_ahead_and_runs_next(
    fleet: Fleet, wait: Callable[..., None]
) -> None:
    thread = _thread()
    first = fleet.client.create_run("long [[latency:5]]", thread_id=thread)
    waiting = fleet.client.create_run("queued behind", thread_id=thread)
    wait(lambda: fleet.client.get_run(first.id).status == "running", 30, "the first run to start")
    urgent = fleet.client.run("urgent", thread_id=thread, thread_policy="interrupt", timeout=60)
    assert urgent.status == "succeeded"
    assert fleet.client.get_run(first.id).status == "cancelled"
    assert fleet.client.get_run(waiting.id).status == "cancelled"
    view = fleet.client.get_thread(thread)
    assert view.turns == 1  # only the run that succeeded added its turn
    assert view.messages[0] == {"role": "user", "content": "urgent"}


def test_full_history_keeps_tool_calls_with_their_results(fleet: Fleet) -> None:
    thread = _thread()
    first = fleet.client.run(
        'call calculator {"expression": "6*7"}',
        thread_id=thread,
        thread_history="full",
        tools=["calculator"],
        timeout=60,
    )
    assert first.status == "succeeded"
    history = fleet.client.get_thread(thread).messages
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"]
    call_id = history[1]["tool_calls"][0]["id"]
    assert history[2]["tool_call_id"] == call_id
    second = fleet.client.run("and now?", thread_id=thread, tools=[], timeout=60)
    assert [m["role"] for m in _messages(fleet, second.id)][:4] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ]


def test_a_thread_belongs_to_its_tenant(fleet: Fleet) -> None:
    thread = _thread()
    fleet.client.run("mine", thread_id=thread, timeout=60)
    with fleet.client_of("other-tenant") as other:
        with pytest.raises(NotFound):
            other.get_thread(thread)
        theirs = other.run("theirs", thread_id=thread, timeout=60)
        # The same ID names another thread: nothing of the first one's history.
        assert [m["content"] for m in _messages(fleet, theirs.id)] == [
            "theirs",
            theirs.result,
        ]
        assert other.get_thread(thread).turns == 1
    assert fleet.client.get_thread(thread).turns == 1


def test_a_thread_with_an_unfinished_run_is_not_deleted(
    fleet: Fleet, wait: Callable[..., None]
) -> None:
    thread = _thread()
    run = fleet.client.create_run("slow [[latency:2]]", thread_id=thread)
    wait(lambda: fleet.client.get_run(run.id).status == "running", 30, "the run to start")
    with pytest.raises(Conflict):
        fleet.client.delete_thread(thread)
    fleet.client.wait(run.id, timeout=60)
    fleet.client.delete_thread(thread)
    with pytest.raises(NotFound):
        fleet.client.get_thread(thread)
    with pytest.raises(NotFound):
        fleet.client.delete_thread(thread)


def test_a_cancelled_waiting_run_leaves_the_queue_and_the_next_one_runs(
    fleet: Fleet, wait: Callable[..., None]
) -> None:
    thread = _thread()
    first = fleet.client.create_run("one [[latency:1]]", thread_id=thread)
    second = fleet.client.create_run("two", thread_id=thread)
    third = fleet.client.create_run("three", thread_id=thread)
    wait(lambda: fleet.client.get_thread(thread).waiting == [second.id, third.id], 30, "a queue")
    fleet.client.cancel(second.id)
    assert fleet.client.wait(third.id, timeout=60).status == "succeeded"
    assert fleet.client.wait(first.id, timeout=60).status == "succeeded"
    assert fleet.client.get_run(second.id).status == "cancelled"
    assert fleet.client.get_thread(thread).turns == 2


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"input": "x", "thread_id": "a:b"}, "String should match pattern"),
        ({"input": "x", "thread_id": "t", "thread_policy": "maybe"}, "enqueue"),
        ({"items": [{"input": "x", "thread_id": "t"}]}, "cannot be on a thread"),
    ],
)
def test_a_bad_thread_request_is_refused(fleet: Fleet, body: dict[str, Any], words: str) -> None:
    path = "/v1/batches" if "items" in body else "/v1/runs"
    response = fleet.http.post(path, json=body)
    assert response.status_code == 422, response.text
    assert words in response.text


def test_the_oldest_turns_go_first_and_whole(fleet: Fleet) -> None:
    """The history keeps thread_max_turns turns (here 2), dropping the oldest whole, also one
    of several messages. Driven through the run store's scripts on the fleet's Redis, with no
    message published: no worker takes these runs."""
    # Its own key prefix: nothing of it shows in the fleet's runs or metrics.
    settings = fleet.settings.model_copy(update={"thread_max_turns": 2, "key_prefix": "trim"})
    store = RunStore(fleet.redis, settings)
    thread, chain = _thread(), [Target("default", "sim-1")]
    for turn in range(3):
        run_id = f"trim-{uuid.uuid4().hex}"
        request = RunRequest(input=f"q{turn}", thread_id=thread, thread_history="full")
        store.create_run(run_id, request, [], chain, tenant="trim")
        claim = store.begin_step(run_id, 1)
        assert claim.run is not None
        answer = StepAnswer(
            [
                {"role": "assistant", "content": None, "tool_calls": [{"id": f"c{turn}"}]},
                {"role": "tool", "tool_call_id": f"c{turn}", "content": "1"},
                {"role": "assistant", "content": f"a{turn}"},
            ],
            1,
            1,
            0,
            chain[0],
            step_fields(0.0, chain[0]),
        )
        store.apply_and_finish_step(
            run_id, 1, claim.token, answer, status=RunStatus.SUCCEEDED, result=f"a{turn}"
        )
    p = settings.redis.key_prefix
    history = [
        json.loads(m) for m in fleet.redis.lrange(keys.thread_messages(p, "trim", thread), 0, -1)
    ]
    assert [m.get("content") for m in history if m["role"] == "user"] == ["q1", "q2"]
    assert len(history) == 8  # two turns of four messages: a call never loses its result
    assert fleet.redis.lrange(keys.thread_turns(p, "trim", thread), 0, -1) == ["4", "4"]
    assert fleet.redis.hget(keys.thread(p, "trim", thread), "turns") == "3"


def test_a_thread_path_that_is_no_thread_id_is_refused(fleet: Fleet) -> None:
    # A colon would reach another key of the thread (its messages list) instead.
    assert fleet.http.get("/v1/threads/t:messages").status_code == 422
    assert fleet.http.delete("/v1/threads/t:queue").status_code == 422
    assert fleet.http.get("/v1/threads/t", params={"offset": 2**63}).status_code == 422
