"""A run's events over SSE: in order, resumable with Last-Event-ID, nothing lost or repeated."""

from __future__ import annotations

import httpx

from agentfleet.client import Client, Event
from agentfleet.producer.events import KEEPALIVE
from tests.conftest import Fleet

PROMPT = (
    "[[latency:0.4]] [[tag:events-1]] "
    'call record_sleep {"key": "events-1", "seconds": 0.5} and then tell me a long story'
)


def _read(
    fleet: Fleet, run_id: str, last: str | None, limit: int | None, timeout: float = 30
) -> list[Event]:
    """Events from a fresh connection, closed after ``limit`` events (None: to the end);
    ``Unreachable`` if the server sends nothing for ``timeout`` seconds."""
    seen: list[Event] = []
    events_timeout = httpx.Timeout(10, read=timeout)
    with Client(
        fleet.stack.api_url, api_key=fleet.stack.api_key, events_timeout=events_timeout
    ) as c:
        for event in c.events(run_id, after=last, reconnect=False):
            seen.append(event)
            if limit is not None and len(seen) == limit:
                break  # the client drops the connection mid-run
    return seen


def test_reconnect_with_last_event_id_gets_every_event_once_in_order(fleet: Fleet) -> None:
    run_id = fleet.client.create_run(PROMPT, stream=True).id
    with fleet.http.stream("GET", f"/v1/runs/{run_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
    first = _read(fleet, run_id, None, limit=3)
    assert [e.type for e in first] == ["queued", "started", "llm_call_started"]
    # Disconnected; the run goes on. Reconnect after the last event seen.
    rest = _read(fleet, run_id, first[-1].id, limit=None)
    assert rest[-1].type == "succeeded"

    replay = _read(fleet, run_id, None, limit=None)  # a finished run's stream replays
    assert [e.id for e in first + rest] == [e.id for e in replay]
    assert len({e.id for e in replay}) == len(replay)
    kinds = [e.type for e in replay]
    for expected in (
        "llm_call_finished",
        "tool_call_started",
        "tool_call_finished",
        "step_finished",
        "token",
    ):
        assert expected in kinds, kinds
    assert kinds.index("tool_call_started") < kinds.index("tool_call_finished")
    streamed = "".join(e.data["text"] for e in replay if e.type == "token")
    assert streamed == fleet.client.get_run(run_id).result
    assert all(e.data["run_id"] == run_id for e in replay)


def test_client_iterates_events_to_the_end(fleet: Fleet) -> None:
    run_id = fleet.client.create_run('call calculator {"expression": "6*7"}').id
    events = list(fleet.client.events(run_id))
    assert events[0].type == "queued"
    assert events[-1].type == "succeeded"
    assert events[-1].data["result"] == "Results: calculator=42.0"
    finished = [e for e in events if e.type == "llm_call_finished"]
    assert [e.data["step"] for e in finished] == [1, 2]
    # Without streaming asked for, no token events.
    assert "token" not in {e.type for e in events}


def test_bad_last_event_id_is_a_400(fleet: Fleet) -> None:
    run_id = fleet.client.create_run("hi").id
    response = fleet.http.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "nope"})
    assert response.status_code == 400
    assert "not an event ID" in response.json()["detail"]


def test_events_are_in_the_order_things_happened(fleet: Fleet) -> None:
    # A step is finished before the tool calls it dispatches start; the next step's LLM call
    # starts after they all finished.
    prompt = 'call calculator {"expression": "6*7"} call text_stats {"text": "in order"}'
    run_ids = [fleet.client.create_run(prompt).id for _ in range(10)]
    for run_id in run_ids:
        assert fleet.client.wait(run_id, timeout=30).status == "succeeded"
        kinds = [e.type for e in fleet.client.events(run_id)]
        step_1 = ["queued", "started", "llm_call_started", "llm_call_finished", "step_finished"]
        assert kinds[:5] == step_1, kinds
        assert sorted(kinds[5:9]) == ["tool_call_finished"] * 2 + ["tool_call_started"] * 2
        step_2 = ["llm_call_started", "llm_call_finished", "step_finished", "succeeded"]
        assert kinds[9:] == step_2, kinds


def test_reconnect_to_a_finished_run_sends_the_rest_and_ends(fleet: Fleet) -> None:
    run_id = fleet.client.create_run('call calculator {"expression": "2+3"}').id
    assert fleet.client.wait(run_id, timeout=30).status == "succeeded"
    replay = _read(fleet, run_id, None, limit=None)
    assert replay[-1].type == "succeeded"
    # Shorter than the keep-alive interval: a stream left open times out instead of being
    # kept alive by comments, and the test fails instead of hanging.
    quiet = KEEPALIVE / 2
    assert _read(fleet, run_id, replay[-1].id, limit=None, timeout=quiet) == []
    rest = _read(fleet, run_id, replay[-3].id, limit=None, timeout=quiet)
    assert [e.id for e in rest] == [e.id for e in replay[-2:]]
