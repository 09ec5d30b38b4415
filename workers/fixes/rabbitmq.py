"""RabbitMQ brokers: every queue declared and bound for delayed delivery, countdowns of 1 s+.

Both are correctness fixes. The app class (:class:`RabbitMQCelery`) is chosen by the broker
URL (``workers/broker.py``) in every process: any process that sends a countdown needs the
rounding (workers send retries and the chord recovery check); the bootstep runs only in
workers, where Celery runs consumer bootsteps.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
)

log = logging.getLogger(__name__)


class DeclareFleetQueues(bootsteps.StartStopStep):
    """Declare every fleet queue and bind it for native delayed delivery, whatever ``-Q`` says.

    Celery binds every configured queue to the delayed-delivery exchange when a worker starts,
    but declares only the queues that worker consumes. On a fresh vhost the first ``-Q agents``
    worker cannot bind ``tools`` or ``batch`` (404, logged as "Native delayed delivery will
    not be available"); if no later worker did, a countdown for them (a busy tool call's
    retry, the chord recovery check) would be dead-lettered to nowhere and lost. This step runs
    after Celery's, on every (re)connection, and leaves every queue declared and bound.
    """

    requires = ("celery.worker.consumer.delayed_delivery:DelayedDelivery",)

    def start(self, c: Any) -> None:
        with c.app.connection_for_write() as connection:
            for queue in c.app.amqp.queues.values():
                queue.bind(connection.default_channel).declare()
                bind_queue_to_native_delayed_delivery_exchange(connection, queue)
        log.info("every fleet queue is declared and bound for native delayed delivery")


class RabbitMQCelery(Celery):
    """The fleet's Celery app on a RabbitMQ broker.

    Its workers run :class:`DeclareFleetQueues`, and its countdowns under one second become
    one second: native delayed delivery (Celery 5.7) routes a countdown through RabbitMQ's
    delay queues by ``int(countdown)`` whole seconds and raises ValueError for one that
    truncates to 0. Inside ``Task.retry`` that error turns into a rejected message, and the
    run would stop. Our short retries (a busy lease, a quick backoff) wait a little longer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps["consumer"].add(DeclareFleetQueues)

    def send_task(self, name: str, *args: Any, countdown: float | None = None, **kw: Any) -> Any:
        if countdown is not None and 0 < countdown < 1:
            countdown = 1.0
        return super().send_task(name, *args, countdown=countdown, **kw)
