"""kombu's Redis transport, with the fixes for workers that lose Redis (a restart, a failover).

Selected by the ``broker_transport`` setting of a Redis broker (``workers/broker.py``) in every
process, because every process that consumes from the broker can meet the first bug: workers,
and Flower, which consumes task events. kombu's own classes stay unpatched.

1. **Reconnecting** (correctness). When a worker loses Redis, Celery collects the broker
   connection (``kombu.Connection.collect`` sets the transport's ``client`` to None) and then
   closes it. Closing the consuming channel a second time restores its unacknowledged
   messages (``QoS.restore_unacked``) through a new pool, and ``Channel._get_pool`` ->
   ``Channel._connparams`` reads ``self.connection.client.hostname``: kombu 5.7 raises
   ``AttributeError`` there. The worker takes it for a fatal error and never consumes again,
   so one Redis restart stops the whole fleet. Here it is a connection error, which Celery
   ignores while it reconnects; the messages stay in kombu's unacked hash in Redis and come
   back with the visibility timeout, like those of any worker that lost its connection.
   Upstream: celery/kombu#582 (the same ``AttributeError`` closing a channel), celery/celery#8030
   (a worker that stops consuming after a Redis reconnection).
2. **A message taken as Redis goes away** (correctness). kombu takes a message with ``BRPOP``
   (``Channel._brpop_read``) and records it as unacknowledged with a second command
   (``Transport._deliver`` -> ``QoS.append``). If Redis shuts down in between, that record
   fails and the message, now only in this process's memory, is dropped. Here it is kept and
   pushed back onto its queue as soon as this worker consumes again. (A worker killed in that
   moment still loses it: see "Worker loss" in docs/design.md.)
3. **A connection Redis closed while it was back at once** (correctness): the channels here are
   also :class:`~agentfleet.workers.fixes.redis_eventloop.EventLoopChannel`, whose event-loop
   connections raise instead of reconnecting by themselves (see that module).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from agentfleet.workers.fixes.redis_eventloop import EventLoopChannel

log = logging.getLogger(__name__)

#: Messages taken from a queue whose unacked record could not be written, as (queue, raw
#: message). One consumer per worker process, and it runs in the main thread.
_stranded: list[tuple[str, dict[str, Any]]] = []


class _ChannelFixes(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection was closed after it was lost")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        self._push_back_stranded()
        return super().basic_consume(queue, *args, **kwargs)  # type: ignore[no-untyped-call]

    def _push_back_stranded(self) -> None:
        while _stranded:
            queue, message = _stranded[-1]
            # Raises while Redis is still away: the message stays for the next attempt.
            self._put(queue, message)  # type: ignore[no-untyped-call]
            _stranded.pop()
            task_id = message.get("headers", {}).get("id")
            log.warning(
                "pushed task %s back onto %r: Redis went away as it was taken", task_id, queue
            )


class _TransportFixes(kombu_redis.Transport):
    def _deliver(self, message: dict[str, Any], queue: str) -> None:
        try:
            super()._deliver(message, queue)  # type: ignore[no-untyped-call]
        except self.connection_errors:
            _stranded.append((queue, message))
            raise


class Channel(_ChannelFixes, EventLoopChannel):
    pass


class Transport(_TransportFixes):
    """For ``redis://`` and ``rediss://`` broker URLs."""

    Channel = Channel


class SentinelChannel(_ChannelFixes, EventLoopChannel, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(_TransportFixes, kombu_redis.SentinelTransport):
    """For ``sentinel://`` broker URLs."""

    Channel = SentinelChannel
