"""Redis clients for agentfleet's own keys, one pool per process (made after fork)."""

from __future__ import annotations

import os

import redis

from workers.settings import Settings

_clients: dict[tuple[int, str, bool], redis.Redis] = {}


def get_redis(settings: Settings, *, decode: bool = True) -> redis.Redis:
    """A client for ``settings.redis_url``, created lazily in each process.

    The pool blocks (up to 10 s) rather than failing when every connection is busy: a gevent
    worker runs hundreds of steps at once and redis-py's default pool caps at 100.
    ``decode=False`` gives a client returning bytes, which pybreaker's Redis storage needs.
    """
    key = (os.getpid(), settings.redis_url, decode)
    client = _clients.get(key)
    if client is None:
        pool = redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=10,
            decode_responses=decode,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=25,
        )
        client = redis.Redis(connection_pool=pool)
        _clients[key] = client
    return client
