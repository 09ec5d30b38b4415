"""A worker's task events go out in one ``PUBLISH`` per short window, not one per event.

A worker buffers its task events (received, started, succeeded, ...) and Celery flushes the
buffer on the next turn of the consumer's event loop: under load that is a ``PUBLISH`` per
event, three per task, and every event a pool thread sends also wakes the loop. Here the first
event buffered schedules one flush :data:`EVENT_FLUSH_DELAY` later, in the event loop, so each
``PUBLISH`` carries the events of that window. Monitors (Flower) see an event at most that much
later, and a worker shutting down flushes what it holds first.

The ``task-sent`` events of the tasks a worker publishes itself (a step's tool calls, its next
step) join the same buffer when they are sent in the consumer's own process, as on the threads
pool; Celery publishes each on its own. A prefork child has no consumer, and a gevent or
eventlet consumer has no event loop to flush a buffer (Celery gives it no ``buffer_group``):
they publish as Celery does.

Upstream behaviour: ``celery/worker/consumer/consumer.py`` ``on_send_event_buffered`` calls
``hub.call_soon(self._flush_events_promise)`` for every buffered event, and
``celery/worker/consumer/events.py`` buffers the ``task`` group only when the consumer has a
hub. Without this fix nothing breaks; workers spend the CPU. Speed fix ``event_batching``, a
consumer class selected by ``worker_consumer`` in worker processes only; bench switch
``DISABLE_AGENTFLEET_FIXES=event_batching``. Contract: worth 5 % or more on (b); in four on/off
pairs of ``python -m ops.bench --only b --pools threads --submit direct`` it gave 9 to 58 % more
steps per second relative to the floor, and 2 to 13 % less CPU per run in (c)
(``docs/performance.md``, Speed fixes).
"""

from __future__ import annotations

import os
from typing import Any, Final

from celery.events.dispatcher import EventDispatcher
from celery.worker.consumer import Consumer as CeleryConsumer

#: Seconds the first buffered task event waits for others to share its publish.
EVENT_FLUSH_DELAY: Final = 0.05
#: Buffered events that make the sending thread flush at once; high enough that only the
#: event loop flushes. A flush in a pool thread would publish on the events connection from
#: that thread while the loop reads it, which a py-amqp connection does not allow: with
#: RabbitMQ as the broker, workers then miss heartbeats and lose their connections.
EVENT_BUFFER_LIMIT: Final = 100_000
#: What ``worker_consumer`` names to select :class:`Consumer`.
CONSUMER_PATH: Final = "agentfleet.workers.fixes.event_batching:Consumer"

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
