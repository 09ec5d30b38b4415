"""Every Celery, kombu and billiard name the fixes (``workers/fixes/``) replace, override or
call still exists, with the parameters the fix was written against.

A fix of a dependency's internals is only as good as the names it relies on: an upgrade that
renames one would turn the fix into a silent no-op, or break it at the first task. This test
fails instead. :data:`OVERRIDDEN` is also the list ``tests/test_worker_fixes.py`` checks a
process that is not a worker leaves as Celery made it.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery import Celery
from celery.app import amqp, backends, trace
from celery.app.events import Events
from celery.backends.asynchronous import AsyncBackendMixin
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.events.dispatcher import EventDispatcher
from celery.utils.imports import symbol_by_name
from celery.worker.consumer import Consumer
from celery.worker.consumer import events as consumer_events
from celery.worker.request import Request
from kombu.asynchronous import Hub
from kombu.transport import native_delayed_delivery
from kombu.transport import redis as kombu_redis
from redis.retry import Retry

from agentfleet.workers.fixes.result_backend import (
    FleetRedisBackend,
    FleetSentinelBackend,
    backend_url,
)

AS_TASK_V2 = [
    "self", "task_id", "name", "args", "kwargs", "countdown", "eta", "group_id", "group_index",
    "expires", "retries", "chord", "callbacks", "errbacks", "reply_to", "time_limit",
    "soft_time_limit", "create_sent_event", "root_id", "parent_id", "shadow", "chain", "now",
    "timezone", "origin", "ignore_result", "argsrepr", "kwargsrepr", "stamped_headers",
    "replaced_task_nesting", "options",
]  # fmt: skip

DISPATCHER_INIT = [
    "self", "connection", "hostname", "enabled", "channel", "buffer_while_offline", "app",
    "serializer", "groups", "delivery_mode", "buffer_group", "buffer_limit", "on_send_buffered",
]  # fmt: skip

#: (owner, name, its parameters in order): what a fix overrides in a subclass or replaces.
OVERRIDDEN: list[tuple[Any, str, list[str]]] = [
    # result_backend: no pending results in a worker; every state stored by one script.
    (AsyncBackendMixin, "add_pending_result", ["self", "result", "weak", "start_drainer"]),
    (AsyncBackendMixin, "remove_pending_result", ["self", "result"]),
    (AsyncBackendMixin, "add_pending_results", ["self", "results", "weak"]),
    (
        RedisBackend,
        "_store_result",
        ["self", "task_id", "result", "state", "traceback", "request", "kwargs"],
    ),
    # redact: the message factory and the event dispatcher.
    (amqp.AMQP, "as_task_v2", AS_TASK_V2),
    (
        EventDispatcher,
        "send",
        ["self", "type", "blind", "utcoffset", "retry", "retry_policy", "Event", "fields"],
    ),
    (
        EventDispatcher,
        "publish",
        ["self", "type", "fields", "producer", "blind", "Event", "kwargs"],
    ),
    # redis_transport: reconnecting, stranded messages; redis_eventloop: no retry in the loop.
    (kombu_redis.Channel, "_connparams", ["self", "asynchronous"]),
    (kombu_redis.Channel, "basic_consume", ["self", "queue", "args", "kwargs"]),
    (kombu_redis.Transport, "_deliver", ["self", "message", "queue"]),
    # controlflow: the tracer's ExceptionInfo, replaced by a subclass.
    (ExceptionInfo, "__init__", ["self", "exc_info", "internal"]),
    # event_batching: the consumer's flush of task events, in a subclass.
    (Consumer, "_flush_events", ["self"]),
    (Consumer, "on_send_event_buffered", ["self"]),
    (Consumer, "shutdown", ["self"]),
]

#: (owner, name, its parameters in order): what a fix calls.
CALLED: list[tuple[Any, str, list[str]]] = [
    (
        RedisBackend,
        "_get_result_meta",
        ["self", "result", "state", "traceback", "request", "format_date", "encode"],
    ),
    (RedisBackend, "get_key_for_task", ["self", "task_id", "key"]),
    (RedisBackend, "ensure", ["self", "fun", "args", "policy"]),
    (RedisBackend, "encode", ["self", "data"]),
    (backends, "by_url", ["backend", "loader"]),
    (ExceptionWithTraceback, "__init__", ["self", "exc", "tb"]),
    (kombu_redis.Channel, "_put", ["self", "queue", "message", "kwargs"]),
    # redis_eventloop: the retry of the event-loop connections.
    (Retry, "__init__", ["self", "backoff", "retries"]),
    # event_batching: one flush per window on the consumer's event loop; the dispatcher's
    # buffer it reads and sizes.
    (Hub, "call_soon", ["self", "callback"]),
    (Hub, "call_later", ["self", "delay", "callback"]),
    (EventDispatcher, "__init__", DISPATCHER_INIT),
    # rabbitmq: the countdown of every task sent, and the delayed-delivery binding.
    (Celery, "send_task", ["self", "name", "args", "kwargs", "countdown"]),
    (
        native_delayed_delivery,
        "bind_queue_to_native_delayed_delivery_exchange",
        ["connection", "queue", "prefix"],
    ),
]

#: (owner, attribute) pairs a fix assigns or reads without calling them.
ATTRIBUTES: list[tuple[object, str]] = [
    (trace, "ExceptionInfo"),  # controlflow replaces it
    (RedisBackend, "_MAX_STR_VALUE_SIZE"),  # result_backend keeps Celery's size check
    (Events, "dispatcher_cls"),  # redact
    (Request, "_argsrepr"),  # redact: the slots its reprs are read from
    (Request, "_kwargsrepr"),
    (Request, "request_dict"),
    (kombu_redis, "SentinelChannel"),  # redis_transport
    (kombu_redis, "SentinelTransport"),
]

#: Instance attributes of the backend the store reads.
BACKEND_FIELDS = ("expires", "failure_expires", "client")


def _ids(rows: list[tuple[Any, str, list[str]]]) -> list[str]:
    return [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name, _ in rows]


@pytest.mark.parametrize(("owner", "name", "parameters"), OVERRIDDEN, ids=_ids(OVERRIDDEN))
def test_an_overridden_callable_keeps_its_parameters(
    owner: Any, name: str, parameters: list[str]
) -> None:
    assert list(inspect.signature(getattr(owner, name)).parameters) == parameters


@pytest.mark.parametrize(("owner", "name", "parameters"), CALLED, ids=_ids(CALLED))
def test_a_called_callable_keeps_its_parameters(
    owner: Any, name: str, parameters: list[str]
) -> None:
    # A prefix: later parameters with defaults may come and go without breaking the call.
    names = list(inspect.signature(getattr(owner, name)).parameters)
    assert names[: len(parameters)] == parameters


@pytest.mark.parametrize(
    ("owner", "name"), ATTRIBUTES, ids=[f"{getattr(o, '__name__', o)}.{n}" for o, n in ATTRIBUTES]
)
def test_a_replaced_attribute_exists(owner: object, name: str) -> None:
    assert hasattr(owner, name) or name in getattr(owner, "__slots__", ())


def test_the_backend_keeps_what_the_store_script_reads() -> None:
    backend = RedisBackend(app=Celery(set_as_current=False), url="redis://localhost:1/0")
    for field in BACKEND_FIELDS:
        assert hasattr(backend, field), field


def test_the_trace_logger_is_the_one_redacted() -> None:
    # workers/fixes/redact.py rewrites the "Task ... succeeded" records of this logger.
    assert trace.logger.name == "celery.app.trace"
    assert isinstance(trace.logger, logging.Logger)


def test_the_consumer_buffers_task_events_only_with_an_event_loop() -> None:
    # event_batching schedules Celery's own flush promise, and leaves a consumer without a
    # hub (gevent, eventlet) to publish as Celery does: both read in Celery's source.
    assert "self._flush_events_promise = promise(self._flush_events)" in inspect.getsource(
        Consumer.__init__
    )
    start = inspect.getsource(consumer_events.Events.start)
    assert "buffer_group=['task'] if c.hub else None" in start
    assert "on_send_buffered=c.on_send_event_buffered if c.hub else None" in start


def test_the_rabbitmq_bootstep_requires_a_step_that_exists() -> None:
    step = symbol_by_name("celery.worker.consumer.delayed_delivery:DelayedDelivery")
    assert step.__name__ == "DelayedDelivery"


@pytest.mark.parametrize(
    ("url", "cls"),
    [
        ("redis://localhost:6379/0", FleetRedisBackend),
        ("rediss://localhost:6380/0", FleetRedisBackend),
        ("sentinel://h1:26379;sentinel://h2:26379", FleetSentinelBackend),
    ],
)
def test_celery_resolves_the_backend_url_to_the_fleets_class(url: str, cls: type) -> None:
    # celery/app/backends.py by_url: "<module>:<Class>+<url>" names the class, then the URL.
    resolved, rest = backends.by_url(backend_url(url), Celery(set_as_current=False).loader)
    assert (resolved, rest) == (cls, url)
    assert issubclass(FleetSentinelBackend, SentinelBackend)
