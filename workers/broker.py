"""Broker-specific Celery options, chosen in one place from the broker URL's scheme.

Redis (``redis://``, ``rediss://``, ``sentinel://``) has no acknowledgements of its own: kombu
emulates them with a visibility timeout that every countdown plus the longest hard time limit
must stay under (``agentfleet.workers.conf``). RabbitMQ (``amqp://``, ``amqps://``, ``pyamqp://``)
acknowledges natively and gives unacknowledged messages back the moment a worker's connection
drops, so there is no visibility timeout; instead:

- every queue is a quorum queue (replicated, durable, at-least-once dead-lettering), bound to
  a topic exchange, because Celery's native delayed delivery cannot route through direct ones;
- quorum queues do not support global QoS, so Celery (``worker_detect_quorum_queues``) switches
  to a static per-consumer prefetch, and countdowns (step retries, the chord recovery check)
  wait in RabbitMQ's ``celery_delayed_*`` queues instead of unacknowledged in a worker;
- publisher confirms, so a publish the broker did not take raises instead of vanishing;
- RabbitMQ's ``consumer_timeout`` closes a channel holding a delivery unacknowledged for longer
  (30 min by default); ``Settings`` checks it exceeds the longest hard time limit.

The result backend and the run store stay on Redis whatever the broker is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from celery import Celery

from agentfleet.tasks.setting_groups import BrokerKind, broker_kind
from agentfleet.workers import queues
from agentfleet.workers.fixes.rabbitmq import RabbitMQCelery

if TYPE_CHECKING:
    from agentfleet.tasks.settings import Settings


def _redis_transport(url: str) -> str:
    scheme = urlsplit(url.split(";", 1)[0].strip()).scheme.lower()
    return "SentinelTransport" if scheme == "sentinel" else "Transport"


def broker_config(settings: Settings, redis_transport: dict[str, Any]) -> dict[str, Any]:
    """The Celery settings that depend on which broker ``settings.broker`` is.

    ``redis_transport`` is what a Redis broker gets (``agentfleet.workers.conf.transport_options``).
    """
    if broker_kind(settings.broker) is BrokerKind.REDIS:
        return {
            # kombu's own, fixed to reconnect after Redis restarts without losing a message.
            "broker_transport": (
                f"agentfleet.workers.fixes.redis_transport:{_redis_transport(settings.broker)}"
            ),
            "broker_transport_options": redis_transport,
            "task_queues": queues.declare(),
            # A task still running when its worker loses Redis finishes: its message comes back
            # only after the visibility timeout, long after it ended, and our steps and tool
            # calls are idempotent. Cancelling it would delay its run by that timeout (an hour).
            "worker_cancel_long_running_tasks_on_connection_loss": False,
        }
    return {
        # Only amqp options here: visibility_timeout and the other Redis ones mean nothing to
        # RabbitMQ. Confirms make a rejected publish raise (the API answers 503, a retry is
        # not silently dropped) at the price of a round trip per publish.
        "broker_transport_options": {"confirm_publish": True},
        "task_queues": queues.declare(quorum=True),
        # The defaults, stated because the design depends on them: detect the quorum queues
        # to disable global QoS, and keep countdowns in quorum queues on the broker.
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
        # RabbitMQ hands the message of a task whose worker lost its connection to another
        # worker at once: stop the original rather than run both (prefork pools only).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
    }


def celery_class(settings: Settings) -> type[Celery]:
    """The Celery app class for the broker in ``settings``."""
    return RabbitMQCelery if broker_kind(settings.broker) is BrokerKind.RABBITMQ else Celery
