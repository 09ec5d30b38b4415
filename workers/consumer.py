"""The worker's consumer, publishing its task events in batches.

A worker buffers its task events (received, started, succeeded, ...) and Celery flushes the
buffer on the next turn of the event loop: under load that is a ``PUBLISH`` per event, and
every event sent from a pool thread also wakes the loop. That was an eighth of each worker's
CPU (py-spy, two-step runs at 2 s LLM latency). Here the first event buffered schedules one
flush :data:`EVENT_FLUSH_DELAY` later, in the event loop, so each ``PUBLISH`` carries the
events of that window. Monitors (Flower) see an event at most that much later, and a worker
shutting down flushes what it holds first.
"""

from __future__ import annotations

from celery.worker.consumer import Consumer as CeleryConsumer

#: Seconds the first buffered task event waits for others to share its publish.
EVENT_FLUSH_DELAY = 0.05
#: Buffered events that make the sending thread flush at once; high enough that only the
#: event loop flushes. A flush in a pool thread publishes on the events connection from that
#: thread while the loop reads it, which a py-amqp connection does not allow: with RabbitMQ as
#: the broker, workers then missed heartbeats and lost their connections.
EVENT_BUFFER_LIMIT = 100_000


class Consumer(CeleryConsumer):
    """Celery's consumer with task events flushed at most every :data:`EVENT_FLUSH_DELAY`."""

    _flush_scheduled = False

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
