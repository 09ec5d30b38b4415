"""Structured logs: one JSON object per line, carrying the run and task each line belongs to.

``AGENTFLEET_LOG_FORMAT=json`` makes workers and the API write lines like

    {"timestamp": "2026-11-21T06:39:02.114Z", "level": "INFO", "logger": "agentfleet.tasks.agent",
     "message": "...", "run_id": "cabf369a-...", "task_id": "cabf369a-...",
     "task": "agentfleet.run"}

(on one line). ``run_id`` and ``task_id`` are on every line logged while a task runs, read
from the current Celery request (:func:`agentfleet.workers.taskargs.run_id_of`); in the API,
``run_id`` is that of the request's route (see :mod:`agentfleet.producer.logcontext`). With
tracing on (:mod:`agentfleet.tasks.tracing`), ``trace_id`` and ``span_id`` name the span the
line was logged in: a task's, an LLM call's, an API request's. ``text`` (the default) keeps
Celery's and uvicorn's own formats.

Celery: the worker configures logging itself and then sends ``after_setup_logger`` (root)
and ``after_setup_task_logger`` (``celery.task``, which does not propagate); our handlers
of those signals only change the formatter and add a filter on the handlers Celery made,
so ``--logfile``, stdout redirection and prefork children (which inherit the handlers) keep
working. We do not connect ``setup_logging``: any receiver of it turns Celery's logging
setup off entirely, handlers and redirection included.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

from celery._state import get_current_task

from agentfleet.tasks import tracing
from agentfleet.tasks.context import REQUEST_RUN_ID
from agentfleet.tasks.settings import Settings
from agentfleet.workers.fixes.redact import redact_log_record
from agentfleet.workers.taskargs import run_id_of

#: Celery's logger for "Task ... received": one line per message a worker takes.
RECEIPT_LOGGER: Final = "celery.worker.strategy"

#: Record attributes copied into each JSON line when set.
CONTEXT_FIELDS: Final = ("run_id", "task_id", "task", "trace_id", "span_id")
#: uvicorn's loggers with handlers of their own (they do not propagate to the root).
UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access")


class ContextFilter(logging.Filter):
    """Adds ``run_id``, ``task_id``, ``task`` (and with tracing on ``trace_id`` and ``span_id``)
    to a record; summarizes task results."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = get_current_task()
        request = task.request if task is not None else None
        if request is not None and request.id:
            record.task_id = request.id
            record.task = task.name
            record.run_id = run_id_of(task.name, request.id, request.args, request.kwargs)
        elif getattr(record, "run_id", None) is None:
            record.run_id = REQUEST_RUN_ID.get()
        ids = tracing.log_ids()
        if ids is not None:
            record.trace_id, record.span_id = ids
        redact_log_record(record)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; newlines in messages and tracebacks are escaped."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value:
                entry[name] = value
        entry["process"] = record.process
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _level(settings: Settings) -> int | None:
    """The configured level, or None when ``AGENTFLEET_LOG_LEVEL`` was not set."""
    if "log_level" not in settings.logs.model_fields_set:
        return None
    return logging.getLevelNamesMapping()[settings.logs.log_level]


def _prepare(handlers: Iterable[logging.Handler], settings: Settings) -> None:
    for handler in handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        if settings.logs.log_format == "json":
            handler.setFormatter(JsonFormatter())


def configure_celery_logger(logger: logging.Logger, settings: Settings) -> None:
    """For ``after_setup_logger`` / ``after_setup_task_logger``: format Celery's handlers."""
    _prepare(logger.handlers, settings)
    level = _level(settings)
    if level is not None:
        logger.setLevel(level)


def quiet_receipts(worker_level: int | None, settings: Settings) -> None:
    """Log Celery's "Task ... received" lines only when the worker logs at DEBUG.

    Celery logs every message a worker takes at INFO, from the consumer's one thread, before
    the task starts: a second line per task, next to its end ("succeeded", "retry",
    "ignored", failures), which stays at INFO. Flower sees the receipt as a
    ``task-received`` event.
    """
    level = _level(settings)
    level = level if level is not None else worker_level
    if level is None or level > logging.DEBUG:
        logging.getLogger(RECEIPT_LOGGER).setLevel(logging.WARNING)


def configure_api_logging(settings: Settings) -> None:
    """Structured logs for the API process: the root logger and uvicorn's own loggers."""
    root = logging.getLogger()
    level = _level(settings)
    root.setLevel(level if level is not None else logging.INFO)
    if settings.logs.log_format != "json":
        return
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    handlers = list(root.handlers)
    for name in UVICORN_LOGGERS:
        handlers.extend(logging.getLogger(name).handlers)
    _prepare(handlers, settings)
