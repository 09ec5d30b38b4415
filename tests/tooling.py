"""Tools used by the tests, loaded into workers through ``AGENTFLEET_TOOL_MODULES``.

They prove the documented registration path works, and they leave evidence in Redis so tests
can count executions from outside the worker.
"""

from __future__ import annotations

import asyncio
import os
import time

import redis
from billiard.exceptions import SoftTimeLimitExceeded

from agentfleet.tasks.settings import get_settings
from agentfleet.tasks.tools import tool


def _redis() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis.redis_url, decode_responses=True)


@tool
def explode(message: str) -> str:
    """Always raises, to show that a failing tool is reported to the model."""
    raise RuntimeError(message)


@tool(timeout=1)
def stubborn(seconds: float) -> str:
    """Ignores its soft time limit, so only the hard limit can stop it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except SoftTimeLimitExceeded:
            continue
    return "finished"


@tool
def record_sleep(key: str, seconds: float) -> dict[str, float | int | str]:
    """Sleep, then count one completed execution under ``key`` in Redis."""
    client = _redis()
    client.incr(f"test:started:{key}")
    started = time.time()
    time.sleep(seconds)
    ended = time.time()
    client.incr(f"test:completed:{key}")
    return {"key": key, "started": started, "ended": ended, "pid": os.getpid()}


@tool
async def async_double(n: int) -> int:
    """Doubles ``n`` after yielding to the event loop: an ``async def`` tool."""
    await asyncio.sleep(0.01)
    return 2 * n


@tool(timeout=1)
async def async_sleep(seconds: float) -> str:
    """Sleeps on the event loop, so only its soft time limit can cut it short."""
    await asyncio.sleep(seconds)
    return "finished"


@tool(timeout=11)
def crash(key: str) -> str:
    """Count one execution under ``key`` in Redis, then end the process running it: every
    delivery loses its worker.

    The pool tells a lost worker (the message goes back to the queue) from a hard time limit
    (the call fails) only after ``worker_lost_wait`` (10 s): so the hard limit outlasts it.
    """
    _redis().incr(f"test:started:{key}")
    os._exit(1)


@tool(cache_ttl=300)
def cache_probe(key: str, a: int = 0, b: int = 0, fail: bool = False) -> dict[str, int]:
    """Count one execution under ``key`` in Redis and answer with the count; with ``fail``,
    raise after counting. Its results are cached: a call answered from the cache counts none.
    """
    ran = int(_redis().incr(f"test:ran:{key}"))
    if fail:
        raise RuntimeError(f"failed on execution {ran}")
    return {"a": a, "b": b, "ran": ran}


@tool(cache_ttl=1)
def cache_probe_brief(key: str) -> int:
    """Count one execution under ``key`` in Redis and answer with the count; its results are
    cached for one second."""
    return int(_redis().incr(f"test:ran:{key}"))


@tool(requires_approval=True)
def deploy(service: str, version: str) -> str:
    """Deploy a version of a service (every call waits for a reviewer's approval)."""
    _redis().incr(f"test:deploy:{service}:{version}")
    return f"deployed {service} {version}"
