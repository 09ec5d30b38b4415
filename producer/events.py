"""A run's events as Server-Sent Events, read from its Redis Stream.

The SSE ``id`` of each event is its stream entry ID, so a client that reconnects with
``Last-Event-ID`` resumes with ``XREAD`` after exactly that entry: nothing lost, nothing
repeated, in order. The stream ends after the run's final event (``succeeded``, ``failed``
or ``cancelled``); a finished run's stream replays until it expires with the run. A stream of
a finished run (or of one gone) sends what follows the given ID, if anything, and ends.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from starlette.requests import Request

from agentfleet.tasks import keys
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.states import FINAL

#: A Redis Stream entry ID.
EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
#: A run's final events are named for its final statuses.
FINAL_EVENTS = frozenset(s.value for s in FINAL)
#: Seconds between keep-alive comments while nothing happens (proxies drop idle streams).
KEEPALIVE = 15.0

_clients: dict[tuple[int, str], aioredis.Redis] = {}


def _client(settings: Settings) -> aioredis.Redis:
    # One pool per event loop and URL; SSE connections block in XREAD, not in a thread.
    import asyncio

    key = (id(asyncio.get_running_loop()), settings.redis.redis_url)
    if key not in _clients:
        _clients[key] = aioredis.Redis.from_url(
            settings.redis.redis_url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=KEEPALIVE + 10,
            max_connections=settings.redis.redis_max_connections,
        )
    return _clients[key]


def format_event(event_id: str, kind: str, data: str) -> str:
    return f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n"


async def _has_ended(client: aioredis.Redis, run_key: str) -> bool:
    """Whether the run is final or gone: nothing will be appended to its stream any more."""
    status = await client.hget(run_key, "status")
    return status is None or status in FINAL_EVENTS


async def sse_stream(
    request: Request, settings: Settings, run_id: str, after: str
) -> AsyncIterator[str]:
    client = _client(settings)
    run_key = keys.run(settings.redis.key_prefix, run_id)
    key = keys.run_events(settings.redis.key_prefix, run_id)
    last = after
    yield "retry: 1000\n\n"
    while not await request.is_disconnected():
        # The final event is appended in the same script that makes the run final, so once
        # the record says final everything there is to send is already in the stream.
        ended = await _has_ended(client, run_key)
        block = None if ended else int(KEEPALIVE * 1000)
        reply: Any = await client.xread({key: last}, count=500, block=block)
        if not reply:
            if ended:
                return
            yield ": keep-alive\n\n"
            continue
        for _, entries in reply:
            for event_id, fields in entries:
                last = event_id
                kind = fields.get("type", "message")
                data = json.loads(fields.get("data") or "{}")
                yield format_event(event_id, kind, json.dumps({"run_id": run_id, **data}))
                if kind in FINAL_EVENTS:
                    return
