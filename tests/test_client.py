"""The Python client (``agentfleet.client``) against the real fleet: AsyncClient does what
Client does, and every error answer is the typed error of its status with the server's
message. docs/client.md's examples run in tests/test_docs.py."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from agentfleet.client import (
    EVENTS_TIMEOUT,
    ApiError,
    AsyncClient,
    BadRequest,
    Client,
    ClientError,
    Conflict,
    Event,
    InvalidRequest,
    NotFound,
    Unauthorized,
    Unavailable,
    Unreachable,
    WaitTimeout,
)
from tests.conftest import Fleet

T = TypeVar("T")
CALCULATOR = 'call calculator {"expression": "6*7"}'


def _run(
    fleet: Fleet,
    use: Callable[[AsyncClient], Awaitable[T]],
    key: str | None = None,
    events_timeout: float | httpx.Timeout = EVENTS_TIMEOUT,
) -> T:
    """``use`` an AsyncClient of the fleet (with ``key``, else the fleet's) in a new loop."""
    url, key = fleet.stack.api_url, key or fleet.stack.api_key

    async def session() -> T:
        async with AsyncClient(url, api_key=key, events_timeout=events_timeout) as client:
            return await use(client)

    return asyncio.run(session())


def test_async_client_runs_waits_and_streams_what_the_sync_client_sees(fleet: Fleet) -> None:
    async def use(client: AsyncClient) -> tuple[str, str | None, list[Event]]:
        accepted = await client.create_run(CALCULATOR)
        run = await client.wait(accepted.id, timeout=60)
        return run.id, run.result, [event async for event in client.events(accepted.id)]

    run_id, result, events = _run(fleet, use)
    assert result == "Results: calculator=42.0"
    assert [e.type for e in events][:2] == ["queued", "started"]
    assert events[-1].type == "succeeded"
    assert events[-1].final
    assert not any(e.final for e in events[:-1])
    assert all(e.data["run_id"] == run_id for e in events)
    assert events == list(fleet.client.events(run_id))


def test_async_events_resume_after_an_event_id_and_stop_on_request(fleet: Fleet) -> None:
    async def use(client: AsyncClient) -> tuple[list[Event], list[Event], list[Event]]:
        run_id = (await client.create_run('call calculator {"expression": "2+3"}')).id
        every = [event async for event in client.events(run_id)]
        rest = [event async for event in client.events(run_id, after=every[2].id)]
        first: list[Event] = []
        async for event in client.events(run_id):
            first.append(event)
            if len(first) == 2:
                break  # the stream is closed, the client stays usable
        await client.get_run(run_id)
        return every, rest, first

    every, rest, first = _run(fleet, use)
    assert rest == every[3:]
    assert first == every[:2]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stream_that_breaks_is_reopened_after_the_last_event_seen(
    fleet: Fleet, kind: str
) -> None:
    # A read timeout shorter than the model's pauses breaks the connection several times
    # mid-run; each new one must resume exactly after the last event seen.
    quiet = httpx.Timeout(5, read=0.3)
    run_id = fleet.client.create_run(f"[[latency:1]] [[tag:client-reopen-{kind}]] {CALCULATOR}").id
    if kind == "sync":
        with Client(fleet.stack.api_url, api_key=fleet.stack.api_key, events_timeout=quiet) as c:
            seen = list(c.events(run_id))
    else:

        async def use(client: AsyncClient) -> list[Event]:
            return [event async for event in client.events(run_id)]

        seen = _run(fleet, use, events_timeout=quiet)
    assert seen == list(fleet.client.events(run_id))
    assert seen[-1].type == "succeeded"


def test_async_client_waits_for_many_runs_at_once(fleet: Fleet) -> None:
    async def one(client: AsyncClient, n: int) -> str | None:
        run = await client.wait((await client.create_run(f"[[latency:0.3]] run {n}")).id)
        return run.status

    async def use(client: AsyncClient) -> list[str | None]:
        return list(await asyncio.gather(*(one(client, n) for n in range(8))))

    assert _run(fleet, use) == ["succeeded"] * 8


def test_async_tool_calls_batches_tools_providers_and_health(fleet: Fleet) -> None:
    async def use(client: AsyncClient) -> dict[str, Any]:
        accepted = await client.create_tool_call(
            "calculator", {"expression": "6*7"}, call_id="client-async-calc"
        )
        call = await client.wait_tool_call(accepted.id)
        again = await client.create_tool_call(
            "calculator", {"expression": "6*7"}, call_id="client-async-calc"
        )
        items = [
            {"input": CALCULATOR},
            {"type": "tool_call", "name": "calculator", "arguments": {"expression": "1+1"}},
        ]
        batch_id = (await client.create_batch(items, metadata={"by": "async"})).id
        batch = await client.wait_batch(batch_id, timeout=120)
        return {
            "call": (call.status, call.result),
            "again": again.id,
            "batch": (batch.status, batch.counts.succeeded, batch.metadata),
            "tools": {t.name for t in await client.tools()},
            "providers": [p.state for p in await client.providers()],
            "health": (await client.health()).ok,
        }

    seen = _run(fleet, use)
    assert seen["call"][0] == "succeeded"
    assert seen["call"][1] is not None
    assert seen["call"][1]["output"] == 42.0
    assert seen["again"] == "client-async-calc"
    assert seen["batch"] == ("completed", 2, {"by": "async"})
    assert "calculator" in seen["tools"]
    assert seen["providers"]
    assert seen["health"] is True


def test_a_cancelled_tool_call_reads_as_cancelled_and_is_final(fleet: Fleet) -> None:
    # Eight 2 s calls on 4 tools slots, cancelled at once: at least four never start.
    waits = [{"type": "tool_call", "name": "wait", "arguments": {"seconds": 2}}] * 8
    batch_id = fleet.client.create_batch(waits).id
    fleet.client.cancel_batch(batch_id)
    fleet.client.wait_batch(batch_id, timeout=60)
    items = fleet.client.get_batch(batch_id).items
    cancelled = [item.id for item in items if item.status == "cancelled"]
    assert len(cancelled) >= 4, items
    call = fleet.client.get_tool_call(cancelled[0])
    assert call.status == "cancelled"
    assert call.result is not None
    assert call.result["error"] == {"code": "cancelled", "message": "batch cancelled"}
    # Final: the wait returns at once, though its timeout is far shorter than the interval.
    waited = fleet.client.wait_tool_call(cancelled[0], timeout=0.5, interval=5)
    assert waited == call
    assert _run(fleet, lambda c: c.wait_tool_call(cancelled[-1], timeout=0.5)).status == "cancelled"


def test_the_same_idempotency_key_answers_the_same_run(fleet: Fleet) -> None:
    async def use(client: AsyncClient) -> tuple[str, str]:
        first = await client.create_run("[[tag:client-idem]] hi", idempotency_key="client-idem")
        second = await client.create_run("[[tag:client-idem]] hi", idempotency_key="client-idem")
        return first.id, second.id

    first, second = _run(fleet, use)
    assert first == second
    assert fleet.client.wait(first).status == "succeeded"


def test_an_error_answer_is_the_typed_error_with_the_servers_message(fleet: Fleet) -> None:
    finished = fleet.client.create_run("hi").id
    assert fleet.client.wait(finished).status == "succeeded"

    async def caught(call: Awaitable[object]) -> ApiError:
        with pytest.raises(ApiError) as error:
            await call
        return error.value

    async def use(client: AsyncClient) -> list[ApiError]:
        return [
            await caught(client.get_run("no-such-run")),
            await caught(client.create_run("hi", max_steps=999)),
            await caught(client.cancel(finished)),
            await caught(anext(client.events(finished, after="nope"))),
        ]

    missing, invalid, final, bad_id = _run(fleet, use)
    assert type(missing) is NotFound
    assert (missing.status, missing.message) == (404, "no run with id 'no-such-run'")
    assert type(invalid) is InvalidRequest
    assert invalid.problems == [("max_steps", "max_steps is 999; the limit is 50")]
    assert str(invalid) == "HTTP 422: max_steps: max_steps is 999; the limit is 50"
    assert type(final) is Conflict
    assert final.message == f"run {finished} is already succeeded"
    assert type(bad_id) is BadRequest
    assert bad_id.message == "not an event ID: 'nope'"

    with pytest.raises(Unauthorized) as refused:
        _run(fleet, lambda client: client.get_run(finished), key="not-a-key")
    assert refused.value.status == 401
    # The sync client raises the same.
    with pytest.raises(NotFound, match=r"^HTTP 404: no run with id 'no-such-run'$"):
        fleet.client.get_run("no-such-run")


def test_no_answer_is_unreachable_and_a_wait_out_of_time_is_a_wait_timeout(
    fleet: Fleet,
) -> None:
    async def nobody_there() -> object:
        async with AsyncClient("http://127.0.0.1:9", timeout=2) as client:  # discard port
            return await client.health()

    with pytest.raises(Unreachable) as unreachable:
        asyncio.run(nobody_there())
    assert isinstance(unreachable.value.__cause__, httpx.ConnectError)

    slow = fleet.client.create_run("[[latency:3]] a slow answer").id
    with pytest.raises(WaitTimeout, match=rf"^run {slow} still (queued|running) after 0.5s$"):
        _run(fleet, lambda client: client.wait(slow, timeout=0.5))
    assert fleet.client.wait(slow).status == "succeeded"  # the run went on


@pytest.mark.parametrize(
    "error",
    [
        ApiError(418, "teapot"),
        InvalidRequest(422, [{"loc": ["body", "input"], "msg": "empty"}]),
        Unavailable(503, "service unavailable: redis", 1.0),
        Unreachable("ConnectError: refused"),
        WaitTimeout("run r still running after 1s"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_client_error_copies_by_its_args_and_is_a_client_error(error: ClientError) -> None:
    copied = copy.deepcopy(error)
    assert type(copied) is type(error)
    assert copied.args == error.args
    assert str(copied) == str(error)
    assert isinstance(copied, ClientError)
    if isinstance(error, ApiError):
        assert isinstance(copied, ApiError)
        assert (copied.status, copied.detail, copied.retry_after) == (
            error.status,
            error.detail,
            error.retry_after,
        )


@pytest.mark.timeout(30)
def test_events_after_a_finished_runs_last_event_are_none_and_end(fleet: Fleet) -> None:
    # The API ends such a stream at once; opening it again would get nothing, forever.
    run_id = fleet.client.create_run("hi").id
    last = list(fleet.client.events(run_id))[-1]
    assert last.type == "succeeded"
    assert list(fleet.client.events(run_id, after=last.id)) == []

    async def use(client: AsyncClient) -> list[Event]:
        return [event async for event in client.events(run_id, after=last.id)]

    assert _run(fleet, use) == []
