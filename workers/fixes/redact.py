"""What Flower, task events and logs may show of a task's arguments and results.

Task events carry ``argsrepr``/``kwargsrepr`` and a repr of the return value, and Flower
shows them to anyone who can open it. Our arguments are prompts, transcripts and tool
arguments (which can hold keys), so agentfleet tasks show a short summary instead:

    agentfleet.agent.step   {tool_results=<3 results>, run_id=6f1c..., step=2}
    agentfleet.run          {request=<RunRequest 1.2 kB>}   (or request=None from the API)
    agentfleet.tool.call    {request={version=1, id=..., name=calculator, arguments=<18 chars>}}

Only IDs, step numbers, tool names and numbers are shown verbatim; strings and containers
become their type and size. :func:`describe` is the one rule; it is applied where the
reprs are made:

- :class:`RedactingAMQP` makes every message our app publishes (API, workers' chords,
  retries, ``Task.replace``) with the summary in its headers *and* in its ``task-sent``
  event. A ``before_task_publish`` handler would be too late for the latter: Celery builds
  the ``task-sent`` event from the original reprs before that signal fires.
- :func:`redact_received` (``task_received``) redoes it on the worker for messages from
  publishers that do not run our code (``send_task`` from another service), before the
  ``task-received`` event is sent.
- :class:`RedactingDispatcher` replaces the return value in ``task-succeeded`` events (a
  run's result is the model's answer, which may quote the prompt), and
  :func:`redact_log_record` does the same for Celery's "Task ... succeeded" log line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from celery.app.amqp import AMQP
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher

from agentfleet.tasks import names
from agentfleet.workers.fixes import event_batching
from agentfleet.workers.taskargs import bind, is_ours

#: Keys whose string values are shown as they are, when they look like an ID or a name.
VISIBLE_KEYS: Final = frozenset({"run_id", "id", "name", "model_call_id"})
#: What an ID or a tool name looks like; anything else (spaces, long text) is summarized.
ID_LIKE: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,100}")
#: Mappings whose fields are listed one level deep, by task (a tool call's IDs help; a
#: run's ``request`` is a prompt and is not).
EXPANDED: Final[Mapping[str, frozenset[str]]] = {
    names.TOOL_CALL: frozenset({"request", "payload"}),
}
#: Names shown for summarized values, by parameter name.
LABELS: Final[Mapping[str, str]] = {
    "request": "RunRequest",
    "body": "signature",
    "tool_results": "results",
    "allowed": "tools",
}
#: Celery's logger for "Task ... succeeded in ...: <return value>".
TRACE_LOGGER: Final = "celery.app.trace"


def _bytes(n: int) -> str:
    return f"{n} B" if n < 1000 else f"{n / 1000:.1f} kB"


def _size(value: Any) -> str:
    try:
        return _bytes(len(json.dumps(value, default=str).encode()))
    except (TypeError, ValueError):
        return _bytes(len(repr(value).encode()))


def _render(key: str, value: Any, expand: bool = False) -> str:
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        if key in VISIBLE_KEYS and ID_LIKE.fullmatch(value):
            return value
        return f"<{len(value)} chars>"
    if isinstance(value, Mapping) and expand:
        return "{" + ", ".join(f"{k}={_render(str(k), v)}" for k, v in value.items()) + "}"
    if key == "tool_results" and isinstance(value, Mapping):
        value = [
            value
        ]  # the one result a chain hands to the next step (agentfleet.tasks.agent.fan_out)
    label = LABELS.get(key)
    if isinstance(value, Sequence | set | frozenset) and not isinstance(value, Mapping):
        return f"<{len(value)} {label or 'items'}>"
    return f"<{label or type(value).__name__} {_size(value)}>"


def describe(
    name: str, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
) -> tuple[str, str] | None:
    """(argsrepr, kwargsrepr) safe to show for an agentfleet task; None for other tasks."""
    if not is_ours(name):
        return None
    expanded = EXPANDED.get(name, frozenset())
    return _show(bind(name, args, None), expanded), _show(kwargs or {}, expanded)


def _show(arguments: Mapping[str, Any], expanded: frozenset[str]) -> str:
    return (
        "{" + ", ".join(f"{k}={_render(k, v, k in expanded)}" for k, v in arguments.items()) + "}"
    )


def summarize_result(shown: object) -> str:
    """What an event or a log line shows of a task's return value (Celery's repr): its size."""
    return f"<result {_bytes(len(str(shown).encode()))}>"


class RedactingAMQP(AMQP):
    """Celery's message factory, with our tasks' argument reprs summarized."""

    def as_task_v2(
        self,
        task_id: str,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *rest: Any,
        **options: Any,
    ) -> Any:
        # Always ours, even when the caller passed its own reprs: one rule for every message.
        reprs = describe(name, args, kwargs)
        if reprs is not None:
            options["argsrepr"], options["kwargsrepr"] = reprs
        return super().as_task_v2(task_id, name, args, kwargs, *rest, **options)


def _redact_fields(type_: str, fields: dict[str, Any]) -> dict[str, Any]:
    if type_ == "task-succeeded" and "result" in fields:
        return {**fields, "result": summarize_result(fields["result"])}
    return fields


class RedactingDispatcher(EventDispatcher):
    """Sends task events with return values replaced by their size."""

    def send(self, type: str, *args: Any, **fields: Any) -> Any:
        return super().send(type, *args, **_redact_fields(type, fields))

    def publish(self, type: str, fields: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        fields = _redact_fields(type, fields)
        # In a worker, the task-sent events of what it publishes go out with its own batch.
        if type == "task-sent" and event_batching.buffer_sent_event(self, fields):
            return None
        return super().publish(type, fields, *args, **kwargs)


class RedactingEvents(Events):
    """``app.events`` whose dispatcher is :class:`RedactingDispatcher`."""

    dispatcher_cls = "agentfleet.workers.fixes.redact:RedactingDispatcher"


def redact_received(request: Any) -> None:
    """Summarize a received message's reprs before its ``task-received`` event is sent."""
    reprs = describe(request.name, request.args, request.kwargs)
    if reprs is None:
        return
    # Request keeps them in slots read by its argsrepr/kwargsrepr properties (the event and
    # log lines), and in the request dict that becomes the task's context.
    request._argsrepr, request._kwargsrepr = reprs
    request.request_dict["argsrepr"], request.request_dict["kwargsrepr"] = reprs


def redact_log_record(record: logging.LogRecord) -> None:
    """Replace the return value in Celery's "Task ... succeeded" line with its size."""
    if record.name != TRACE_LOGGER or not isinstance(record.args, Mapping):
        return
    if "return_value" in record.args:
        record.args = {**record.args, "return_value": summarize_result(record.args["return_value"])}
