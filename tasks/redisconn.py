"""Redis clients for agentfleet's own keys, one pool per process (made after fork)."""

from __future__ import annotations

import math
import os
from typing import Any

import redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from workers.settings import Settings

_clients: dict[tuple[int, str, bool], redis.Redis] = {}

#: Pause between a worker's attempts to reach Redis again (also for publishes and results,
#: see workers.conf.worker_config).
RETRY_INTERVAL = 0.5
#: Seconds this process's clients keep retrying a lost connection before raising (0: never).
#: Workers set it at start (workers.signals), so a task waits for a restarting Redis instead
#: of failing halfway through a step; the API leaves it at 0 and answers 503 at once.
_outage_wait = 0.0


def wait_out_outages(seconds: float) -> None:
    """Make the Redis clients this process creates retry a lost connection for ``seconds``."""
    global _outage_wait
    _outage_wait = seconds


def get_redis(settings: Settings, *, decode: bool = True) -> redis.Redis:
    """A client for ``settings.redis_url``, created lazily in each process.

    The pool blocks (up to 10 s) rather than failing when every connection is busy: a gevent
    worker runs hundreds of steps at once and redis-py's default pool caps at 100.
    ``decode=False`` gives a client returning bytes, which pybreaker's Redis storage needs.
    """
    key = (os.getpid(), settings.redis_url, decode)
    client = _clients.get(key)
    if client is None:
        patience: dict[str, Any] = {}
        if _outage_wait > 0:
            # Connecting and each command (scripts included: they are idempotent) are retried.
            attempts = math.ceil(_outage_wait / RETRY_INTERVAL)
            patience["retry"] = Retry(ConstantBackoff(RETRY_INTERVAL), attempts)
        pool = redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=10,
            decode_responses=decode,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=25,
            **patience,
        )
        client = redis.Redis(connection_pool=pool)
        _clients[key] = client
    return client
