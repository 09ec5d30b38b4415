"""Accepting work: write the record, then publish; never one without the other."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from tasks import names
from tasks.agent import resolve_tools
from tasks.batch import batch_key
from tasks.errors import AgentfleetError
from tasks.llm import Target, resolve_chain
from tasks.models import BatchRequest, PromptItem, RunRequest, ToolCallItem, ToolCallRequest
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


def _tools(request: RunRequest, every_tool: Sequence[str] | None) -> list[str]:
    """The run's tools: those it names, else ``every_tool`` (default: every registered one)."""
    if request.tools is None and every_tool is not None:
        return list(every_tool)
    return resolve_tools(request)


def submit_run(
    app: Celery,
    store: RunStore,
    request: RunRequest,
    tenant: str,
    every_tool: Sequence[str] | None = None,
) -> str:
    """Create a run and enqueue its first step; the run ID is the task ID.

    ``request`` must have passed :func:`tasks.models.limit_problems` (its chain resolves).
    ``every_tool`` is what ``tools`` omitted stands for (:func:`producer.fleet.every_tool`).
    """
    run_id = str(uuid.uuid4())
    REQUEST_RUN_ID.set(run_id)  # log lines of the rest of this request name the run
    chain = resolve_chain(store.settings, request.model, request.providers)
    try:
        store.create_run(run_id, request, _tools(request, every_tool), chain, tenant=tenant)
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


def tool_call_key(tenant: str, call_id: str | None) -> str:
    """The stored ID of a tool call: a caller's own ID lives in its tenant's namespace."""
    return f"{tenant}.{call_id}" if call_id else str(uuid.uuid4())


def submit_tool_call(
    app: Celery, store: RunStore, request: ToolCallRequest, tenant: str
) -> tuple[str, bool]:
    """Create and enqueue one tool call. Returns (id, created); an existing ID is not re-sent."""
    call_id = tool_call_key(tenant, request.id)
    try:
        created = store.create_tool_call(call_id, request.name, request.arguments, tenant=tenant)
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


def submit_batch(
    app: Celery,
    store: RunStore,
    request: BatchRequest,
    tenant: str,
    every_tool: Sequence[str] | None = None,
) -> str:
    """Write the batch and every item's record, then publish one dispatch task.

    ``request`` must have passed :func:`tasks.models.batch_problems`; ``every_tool`` is as
    for :func:`submit_run`.
    """
    batch_id = str(uuid.uuid4())
    settings = store.settings
    runs: list[tuple[str, RunRequest, list[str], list[Target]]] = []
    items: list[str] = []
    tools: list[tuple[str, ToolCallItem]] = []
    for item in request.items:
        if isinstance(item, ToolCallItem):
            call_id = str(uuid.uuid4())
            tools.append((call_id, item))
            items.append(f"tool:{call_id}")
            continue
        run = item.as_run() if isinstance(item, PromptItem) else item
        run_id = str(uuid.uuid4())
        chain = resolve_chain(settings, run.model, run.providers)
        runs.append((run_id, run, _tools(run, every_tool), chain))
        items.append(f"run:{run_id}")
    key = batch_key(store, batch_id)
    record: dict[str, str | int | float] = {
        "id": batch_id,
        "tenant": tenant,
        "status": "queued",
        "total": len(items),
        "completed": 0,
        "metadata": json.dumps(request.metadata),
        "created_at": time.time(),
    }
    if request.callback_url:
        record["callback_url"] = str(request.callback_url)
    try:
        pipe = store.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=cast(Any, record))
        for start in range(0, len(items), 1000):
            pipe.rpush(f"{key}:items", *items[start : start + 1000])
        pipe.expire(key, settings.run_ttl)
        pipe.expire(f"{key}:items", settings.run_ttl)
        for call_id, tool in tools:
            store.create_tool_call(
                call_id, tool.name, tool.arguments, tenant=tenant, batch_id=batch_id, client=pipe
            )
        pipe.execute()
        for start in range(0, len(runs), 500):
            store.create_runs(runs[start : start + 500], tenant=tenant, batch_id=batch_id)
    except redis.RedisError as exc:
        _drop_batch(store, batch_id, runs, tools)
        raise Unavailable(f"run store unavailable: {exc}") from None
    try:
        app.send_task(names.BATCH_DISPATCH, args=(batch_id,), argsrepr=f"({batch_id!r})")
    except (OperationalError, redis.RedisError, OSError) as exc:
        _drop_batch(store, batch_id, runs, tools)
        raise Unavailable(f"broker unavailable: {exc}") from None
    return batch_id


def _drop_batch(
    store: RunStore,
    batch_id: str,
    runs: list[tuple[str, RunRequest, list[str], list[Target]]],
    tools: list[tuple[str, ToolCallItem]],
) -> None:
    with contextlib.suppress(redis.RedisError):
        key = batch_key(store, batch_id)
        store.redis.delete(key, f"{key}:items")
        for run_id, *_ in runs:
            store.delete_run(run_id)
        for call_id, _ in tools:
            store.delete_tool_call(call_id)
