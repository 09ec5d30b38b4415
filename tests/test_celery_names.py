"""Every Celery, kombu and billiard name the workers' fixes replace or call still exists, with
the parameters the fix was written against.

A fix of a dependency's internals (``workers/``: results, controlflow, consumer, redact,
redis_transport) is only as good as the names it patches: an upgrade that renames one would
turn the fix into a silent no-op, or break it at the first task. This test fails instead.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery.app import amqp, trace
from celery.app.events import Events
from celery.backends.asynchronous import AsyncBackendMixin
from celery.backends.redis import RedisBackend
from celery.events.dispatcher import EventDispatcher
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from kombu.transport import redis as kombu_redis

#: (the upstream callable a fix replaces, overrides or calls; its parameters, in order).
SIGNATURES: list[tuple[Callable[..., Any], list[str]]] = [
    # workers/results.py: no pending results in workers, one round trip per stored state,
    # the chord's size in one transaction, no subscription when a task is sent.
    (AsyncBackendMixin.add_pending_result, ["self", "result", "weak", "start_drainer"]),
    (AsyncBackendMixin.remove_pending_result, ["self", "result"]),
    (AsyncBackendMixin.add_pending_results, ["self", "results", "weak"]),
    (
        RedisBackend._store_result,
        ["self", "task_id", "result", "state", "traceback", "request", "kwargs"],
    ),
    (
        RedisBackend._get_result_meta,
        ["self", "result", "state", "traceback", "request", "format_date", "encode"],
    ),
    (RedisBackend.set_chord_size, ["self", "group_id", "chord_size"]),
    (RedisBackend.on_task_call, ["self", "producer", "task_id"]),
    (RedisBackend.get_key_for_task, ["self", "task_id", "key"]),
    (RedisBackend.get_key_for_group, ["self", "group_id", "key"]),
    (RedisBackend.ensure, ["self", "fun", "args", "policy"]),
    # workers/controlflow.py: the tracer's ExceptionInfo, without the traceback of Ignore.
    (ExceptionInfo.__init__, ["self", "exc_info", "internal"]),
    (ExceptionWithTraceback.__init__, ["self", "exc", "tb"]),
    # workers/consumer.py: task events flushed in batches by the event loop.
    (Consumer.on_send_event_buffered, ["self"]),
    (Consumer._flush_events, ["self"]),
    (Consumer.shutdown, ["self"]),
    # workers/redact.py: argument and result reprs summarized in messages and events.
    (
        amqp.AMQP.as_task_v2,
        [
            "self",
            "task_id",
            "name",
            "args",
            "kwargs",
            "countdown",
            "eta",
            "group_id",
            "group_index",
            "expires",
            "retries",
            "chord",
            "callbacks",
            "errbacks",
            "reply_to",
            "time_limit",
            "soft_time_limit",
            "create_sent_event",
            "root_id",
            "parent_id",
            "shadow",
            "chain",
            "now",
            "timezone",
            "origin",
            "ignore_result",
            "argsrepr",
            "kwargsrepr",
            "stamped_headers",
            "replaced_task_nesting",
            "options",
        ],
    ),
    (
        EventDispatcher.send,
        ["self", "type", "blind", "utcoffset", "retry", "retry_policy", "Event", "fields"],
    ),
    (EventDispatcher.publish, ["self", "type", "fields", "producer", "blind", "Event", "kwargs"]),
    # workers/redis_transport.py: reconnecting, stranded messages, one shared client.
    (kombu_redis.Channel._create_client, ["self", "asynchronous"]),
    (kombu_redis.Channel._connparams, ["self", "asynchronous"]),
    (kombu_redis.Channel.basic_consume, ["self", "queue", "args", "kwargs"]),
    (kombu_redis.Channel._put, ["self", "queue", "message", "kwargs"]),
    (kombu_redis.Transport._deliver, ["self", "message", "queue"]),
]

#: (owner, attribute) pairs a fix assigns or reads without calling them.
ATTRIBUTES: list[tuple[object, str]] = [
    (trace, "ExceptionInfo"),  # workers/controlflow.py replaces it
    (RedisBackend, "_MAX_STR_VALUE_SIZE"),  # workers/results.py keeps Celery's size check
    (Events, "dispatcher_cls"),  # workers/redact.py
    (Request, "_argsrepr"),  # workers/redact.py: the slots its reprs are read from
    (Request, "_kwargsrepr"),
    (Request, "request_dict"),
    (kombu_redis, "SentinelChannel"),  # workers/redis_transport.py
    (kombu_redis, "SentinelTransport"),
]

#: Instance attributes set by the constructors the fixes run after.
DISPATCHER_FIELDS = ("buffer_group", "buffer_limit", "groups", "enabled")


@pytest.mark.parametrize(
    ("target", "parameters"), SIGNATURES, ids=[f.__qualname__ for f, _ in SIGNATURES]
)
def test_a_replaced_callable_keeps_its_parameters(
    target: Callable[..., Any], parameters: list[str]
) -> None:
    assert list(inspect.signature(target).parameters) == parameters


@pytest.mark.parametrize(
    ("owner", "name"), ATTRIBUTES, ids=[f"{getattr(o, '__name__', o)}.{n}" for o, n in ATTRIBUTES]
)
def test_a_replaced_attribute_exists(owner: object, name: str) -> None:
    assert hasattr(owner, name) or name in getattr(owner, "__slots__", ())


def test_the_dispatcher_and_consumer_keep_what_event_batching_reads() -> None:
    dispatcher = EventDispatcher(connection=None, enabled=False)
    for field in DISPATCHER_FIELDS:
        assert hasattr(dispatcher, field), field
    source = inspect.getsource(Consumer.__init__)
    assert "self._flush_events_promise" in source
    assert "self.hub" in inspect.getsource(Consumer)


def test_the_trace_logger_is_the_one_redacted() -> None:
    # workers/redact.py rewrites the "Task ... succeeded" records of this logger.
    assert trace.logger.name == "celery.app.trace"
    assert isinstance(trace.logger, logging.Logger)
