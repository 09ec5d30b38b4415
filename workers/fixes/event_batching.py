"""The worker's consumer, publishing its task events in batches.

A worker buffers its task events (received, started, succeeded, ...) and Celery flushes the
buffer on the next turn of the event loop: under load that is a ``PUBLISH`` per event, and
every event sent from a pool thread also wakes the loop. That was an eighth of each worker's
CPU (py-spy, two-step runs at 2 s LLM latency). Here the first event buffered schedules one
flush :data:`EVENT_FLUSH_DELAY` later, in the event loop, so each ``PUBLISH`` carries the
events of that window. Monitors (Flower) see an event at most that much later, and a worker
shutting down flushes what it holds first.

The ``task-sent`` events of the tasks a worker publishes itself (a step's tool calls, a retry)
join the same buffer on a threads pool, whose tasks run in the consumer's own process: Celery
publishes each one on its own, a ``PUBLISH`` per task sent. A prefork child has no consumer,
and a gevent or eventlet consumer has no event loop to flush a buffer: they publish them as
Celery does.

Upstream behaviour: ``celery/worker/consumer/consumer.py`` ``Consumer.on_send_event_buffered``
calls ``hub.call_soon(self._flush_events_promise)``, so every buffered event is flushed on the next
loop turn. Without this fix nothing breaks; workers spend the CPU. Speed fix
``event_batching``: the worker's ``worker_consumer``, set in worker processes only; bench switch
``DISABLE_AGENTFLEET_FIXES=event_batching``.
"""

from __future__ import annotations

import os
from typing import Any

from celery.events.dispatcher import EventDispatcher
from celery.worker.consumer import Consumer as CeleryConsumer

#: Seconds the first buffered task event waits for others to share its publish.
EVENT_FLUSH_DELAY = 0.05
#: Buffered events that make the sending thread flush at once; high enough that only the
#: event loop flushes. A flush in a pool thread publishes on the events connection from that
#: thread while the loop reads it, which a py-amqp connection does not allow: with RabbitMQ as
#: the broker, workers then missed heartbeats and lost their connections.
EVENT_BUFFER_LIMIT = 100_000


#: The consumer's dispatcher and the process it belongs to: a prefork child forked after it
#: was set holds a copy of it, which no event loop flushes.
_buffer: tuple[int, EventDispatcher] | None = None


def buffer_sent_event(sender: EventDispatcher, fields: dict[str, Any]) -> bool:
    """Add a ``task-sent`` event to this process's consumer's buffer; False if it has none."""
    if _buffer is None:
        return False
    pid, dispatcher = _buffer
    if pid != os.getpid() or dispatcher is sender or not dispatcher.enabled:
        return False
    if dispatcher.groups and "task" not in dispatcher.groups:
        return False  # task events are off: Celery still publishes task-sent, so do we
    if "task" not in dispatcher.buffer_group:
        return False  # a consumer without an event loop buffers nothing (gevent, eventlet)
    dispatcher.send("task-sent", **fields)
    return True


class Consumer(CeleryConsumer):
    """Celery's consumer with task events flushed at most every :data:`EVENT_FLUSH_DELAY`."""

    _flush_scheduled = False
    _event_dispatcher: EventDispatcher | None = None

    @property
    def event_dispatcher(self) -> EventDispatcher | None:
        return self._event_dispatcher

    @event_dispatcher.setter
    def event_dispatcher(self, dispatcher: EventDispatcher | None) -> None:
        # Set by Celery's Events bootstep when the consumer (re)connects, and cleared on stop.
        global _buffer
        self._event_dispatcher = dispatcher
        _buffer = (os.getpid(), dispatcher) if dispatcher is not None else None

    def on_send_event_buffered(self) -> None:
        # Any thread: a pool thread sends task-started and task-succeeded itself.
        dispatcher = self.event_dispatcher
        if dispatcher is not None and dispatcher.buffer_limit != EVENT_BUFFER_LIMIT:
            dispatcher.buffer_limit = EVENT_BUFFER_LIMIT
        if self.hub is None or self._flush_scheduled:
            return
        self._flush_scheduled = True
        self.hub.call_soon(self._schedule_flush)  # thread-safe; the timer is the loop's own

    def _schedule_flush(self) -> None:
        self.hub.call_later(EVENT_FLUSH_DELAY, self._flush_events_promise)

    def _flush_events(self) -> None:
        # Cleared before the buffer is read: an event buffered after the read sees the flag
        # down and schedules the next flush, so no event waits for one that never comes.
        self._flush_scheduled = False
        super()._flush_events()

    def shutdown(self) -> None:
        self._flush_events()
        super().shutdown()
