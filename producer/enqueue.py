"""Accepting work: write the record, then publish; never one without the other."""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from tasks import names
from tasks.agent import resolve_tools
from tasks.errors import AgentfleetError
from tasks.llm import resolve_chain
from tasks.models import RunRequest, ToolCallRequest
from tasks.store import RunStore
from tasks.toolcall import time_limits, tool_payload
from workers.logs import REQUEST_RUN_ID

log = logging.getLogger(__name__)


class Unavailable(AgentfleetError):
    """Redis or the broker cannot take the work right now; nothing was accepted."""

    code = "unavailable"


def _publish(app: Celery, name: str, task_id: str, **options: Any) -> None:
    # Task events (and Flower) show summarized arguments: see workers/redact.py.
    app.send_task(name, task_id=task_id, **options)


def submit_run(app: Celery, store: RunStore, request: RunRequest) -> str:
    """Create a run and enqueue its first step; the run ID is the task ID.

    ``request`` must have passed :func:`tasks.models.limit_problems` (its chain resolves).
    """
    run_id = str(uuid.uuid4())
    REQUEST_RUN_ID.set(run_id)  # log lines of the rest of this request name the run
    chain = resolve_chain(store.settings, request.model, request.providers)
    try:
        store.create_run(run_id, request, resolve_tools(request), chain)
    except redis.RedisError as exc:
        raise Unavailable(f"run store unavailable: {exc}") from None
    try:
        _publish(app, names.RUN, run_id, kwargs={"request": None})
    except (OperationalError, redis.RedisError, OSError) as exc:
        # The caller gets a 503 and may retry; a record with no message would never finish.
        with contextlib.suppress(redis.RedisError):
            store.delete_run(run_id)
        raise Unavailable(f"broker unavailable: {exc}") from None
    log.info("run %s enqueued", run_id)
    return run_id


def submit_tool_call(app: Celery, store: RunStore, request: ToolCallRequest) -> tuple[str, bool]:
    """Create and enqueue one tool call. Returns (id, created); an existing ID is not re-sent."""
    call_id = request.id or str(uuid.uuid4())
    try:
        created = store.create_tool_call(call_id, request.name, request.arguments)
    except redis.RedisError as exc:
        raise Unavailable(f"run store unavailable: {exc}") from None
    if not created:
        return call_id, False
    soft, hard = time_limits(request.name, store.settings)
    payload = tool_payload(call_id, request.name, request.arguments)
    try:
        _publish(
            app, names.TOOL_CALL, call_id, args=(payload,), soft_time_limit=soft, time_limit=hard
        )
    except (OperationalError, redis.RedisError, OSError) as exc:
        with contextlib.suppress(redis.RedisError):
            store.delete_tool_call(call_id)
        raise Unavailable(f"broker unavailable: {exc}") from None
    return call_id, True
