"""Redis clients for agentfleet's own keys, one pool per process (made after fork)."""

from __future__ import annotations

import logging
import math
import os
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from agentfleet.tasks.settings import Settings, is_sentinel

log = logging.getLogger(__name__)

#: Port of a Sentinel server when its URL names none.
SENTINEL_PORT = 26379

_clients: dict[tuple[int, str, bool], redis.Redis] = {}

#: Pause between a worker's attempts to reach Redis again (also for publishes and results,
#: see agentfleet.workers.conf.worker_config).
RETRY_INTERVAL = 0.5
#: Seconds a worker's command waits for its reply, and for a connection.
WORKER_SOCKET_TIMEOUT = 10.0
WORKER_CONNECT_TIMEOUT = 5.0
#: Seconds this process's clients keep retrying a lost connection before raising (0: never),
#: or None in a process that is not a worker. Workers set it at start (agentfleet.workers.signals),
#: so a task waits for a restarting Redis instead of failing halfway through a step; the API leaves
#: it unset and answers 503 within ``Settings.api.api_redis_timeout``.
_outage_wait: float | None = None


def wait_out_outages(seconds: float) -> None:
    """Make the Redis clients this process creates retry a lost connection for ``seconds``."""
    global _outage_wait
    _outage_wait = seconds


def _patience(settings: Settings) -> dict[str, Any]:
    """Timeouts of this process's connections, and retries for a worker's."""
    if _outage_wait is None:
        # The API: a paused Redis (SIGSTOP, a stalled host) still accepts connections and
        # never answers; the caller gets its 503 after one short wait, without retries.
        return {
            "socket_timeout": settings.api.api_redis_timeout,
            "socket_connect_timeout": settings.api.api_redis_timeout,
        }
    timeouts = {
        "socket_timeout": WORKER_SOCKET_TIMEOUT,
        "socket_connect_timeout": WORKER_CONNECT_TIMEOUT,
    }
    if _outage_wait <= 0:
        return timeouts
    # Connecting and each command are retried; our scripts are safe to run again.
    attempts = math.ceil(_outage_wait / RETRY_INTERVAL)
    return timeouts | {"retry": Retry(ConstantBackoff(RETRY_INTERVAL), attempts)}


def get_redis(settings: Settings, *, decode: bool = True) -> redis.Redis:
    """A client for ``settings.redis.redis_url``, created lazily in each process.

    The pool blocks (up to 10 s) rather than failing when every connection is busy: a gevent
    worker runs hundreds of steps at once and redis-py's default pool caps at 100.
    ``decode=False`` gives a client returning bytes, which pybreaker's Redis storage needs.
    """
    key = (os.getpid(), settings.redis.redis_url, decode)
    client = _clients.get(key)
    if client is None and is_sentinel(settings.redis.redis_url):
        client = _sentinel_master(settings, decode)
        _clients[key] = client
    if client is None:
        pool = redis.BlockingConnectionPool.from_url(
            settings.redis.redis_url,
            max_connections=settings.redis.redis_max_connections,
            timeout=10,
            decode_responses=decode,
            health_check_interval=25,
            **_patience(settings),
        )
        client = redis.Redis(connection_pool=pool)
        _clients[key] = client
    return client


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str | None, int]:
    """Sentinel servers, the Redis password and the DB of a Celery-style Sentinel URL.

    ``sentinel://:password@h1:26379/0;sentinel://h2:26379/0``: the form Celery and kombu
    take for ``broker_url`` and ``result_backend``, so one value serves all three.
    """
    hosts: list[tuple[str, int]] = []
    password: str | None = None
    db = 0
    for part in filter(None, (p.strip() for p in url.split(";"))):
        parsed = urlsplit(part)
        if parsed.scheme != "sentinel" or not parsed.hostname:
            raise ValueError(f"not a sentinel:// URL: {part!r}")
        hosts.append((parsed.hostname, parsed.port or SENTINEL_PORT))
        password = password or (unquote(parsed.password) if parsed.password else None)
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
    return hosts, password, db


def _sentinel_master(settings: Settings, decode: bool) -> redis.Redis:
    # The master is looked up through the Sentinels on every new connection, so a
    # failover moves the run store along with the broker and the result backend.
    hosts, password, db = parse_sentinel_url(settings.redis.redis_url)
    secret = settings.redis.redis_sentinel_password
    sentinel = Sentinel(
        hosts,
        sentinel_kwargs={"password": secret.get_secret_value()} if secret else None,
        socket_timeout=5,
        socket_connect_timeout=5,
    )
    assert settings.redis.redis_sentinel_master  # Settings refuses sentinel:// without it
    client: redis.Redis = sentinel.master_for(
        settings.redis.redis_sentinel_master,
        db=db,
        password=password,
        decode_responses=decode,
        health_check_interval=25,
        max_connections=settings.redis.redis_max_connections,
        **_patience(settings),
    )
    return client


def durability_gap(client: redis.Redis) -> str | None:
    """What keeps a write this Redis acknowledged from surviving a crash of its host, or None.

    Only ``appendonly yes`` with ``appendfsync always`` fsyncs before answering. None too when
    the server refuses ``CONFIG GET`` (managed services often do) or cannot be asked.
    """
    try:
        config = client.config_get("append*")
    except redis.RedisError:
        return None
    if config.get("appendonly") != "yes":
        return "appendonly no: a restart or a crash loses every run record and queued message"
    fsync = config.get("appendfsync", "")
    if fsync != "always":
        return f"appendfsync {fsync}: a crash of its host can lose the last writes it answered"
    return None


def warn_if_not_durable(settings: Settings) -> None:
    """Log once, at start-up, if the run store's Redis may lose what it acknowledged."""
    gap = durability_gap(get_redis(settings))
    if gap:
        log.warning(
            "the run store's Redis has %s (runs answered 202 among them): run it with "
            "appendonly yes and appendfsync always "
            "(docs/design.md, Redis: persistence and restarts)",
            gap,
        )
