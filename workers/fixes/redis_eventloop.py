"""kombu's Redis channel, whose event-loop connections fail instead of reconnecting by themselves.

A consumer reads two connections of kombu's asynchronous pool in its event loop: the ``BRPOP``
connection of its queues, and the subscription on which it hears fanout messages (a worker's
control commands, Flower's task events). ``retry_on_timeout``, which ``workers/conf.py`` sets on
the broker's pools outside the API, makes redis-py retry each call once after a connection
error, reconnecting in between. On the subscription, that retry hangs the consumer
(correctness): kombu reads it with ``PubSub.parse_response()``, which waits for a message
without any timeout, and kombu hands the ``PubSub`` its connection itself, so the ``PubSub``
never registered the callback that subscribes again after a reconnect. When Redis closed the
subscription and took new connections at once (a crash restarted before a busy worker read the
close, ``CLIENT KILL``, the pub/sub output buffer limit), the retry reconnected and read again
from a connection subscribed to nothing, forever: the consumer's thread was stuck, the worker
never consumed again, and it logged nothing until it was stopped.

Here the connections of the asynchronous pool get no retry. The error reaches the consumer,
which reconnects as after any lost broker connection ("Connection to broker lost"). Publishes,
acknowledgements and unacked records use kombu's other pool, which keeps the retry. Upstream:
redis/redis-py#714 (a pub/sub read retried on a new connection blocks forever without a socket
timeout).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def no_retry() -> Retry:
    """What an event-loop connection retries after a connection error: nothing."""
    return Retry(NoBackoff(), 0)


class EventLoopChannel(kombu_redis.Channel):
    """A Redis channel whose event-loop connections (``BRPOP``, the subscription) never retry."""

    def _connparams(self, asynchronous: bool = False) -> Any:
        params = super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
        if asynchronous:
            params["retry"] = no_retry()
        return params
