"""Accepting work: write it pending, publish it, then accept it; a 503 accepted nothing.

A POST makes three writes: its records, pending; its message; and its acceptance, one script
that also keeps the Idempotency-Key's answer. No worker starts pending work: it holds the
message until the work is accepted, or drops it once the records expire
(``AGENTFLEET_PENDING_TTL``). Redis may apply any of these writes late (paused, it buffers
what it is sent), so the API answers 503 only when the acceptance was never sent, and 202 once
it was, even without a reply: Redis applies it when it answers again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from agentfleet.producer.idempotency import Answered, Slot
from agentfleet.tasks import keys, names
from agentfleet.tasks.agent import resolve_tools
from agentfleet.tasks.batch import batch_key
from agentfleet.tasks.errors import AgentfleetError
from agentfleet.tasks.llm import Target, resolve_chain
from agentfleet.tasks.models import (
    BatchRequest,
    PromptItem,
    RunRequest,
    ToolCallItem,
    ToolCallRequest,
)
from agentfleet.tasks.store import RunStore
from agentfleet.tasks.toolcall import time_limits, tool_payload
from agentfleet.workers.logs import REQUEST_RUN_ID

log = logging.getLogger(__name__)


class Unavailable(AgentfleetError):
    """Redis or the broker cannot take the work right now; nothing was accepted."""

    code = "unavailable"


class InProgress(AgentfleetError):
    """Another request is creating the same tool call ID right now; retry."""

    code = "in_progress"


def accepted_body(collection: str, ident: str, status: str = "queued") -> dict[str, Any]:
    """The body of a 202 for ``ident`` in ``collection`` (``runs``, ``tool-calls``, ...)."""
    return {"id": ident, "status": status, "links": {"self": f"/v1/{collection}/{ident}"}}


def _publish(app: Celery, name: str, task_id: str | None = None, **options: Any) -> None:
    # Task events (and Flower) show summarized arguments: see workers/redact.py.
    try:
        app.send_task(name, task_id=task_id, **options)
    except (OperationalError, redis.RedisError, OSError) as exc:
        # The pending record expires by itself: nothing to undo.
        raise Unavailable(f"broker unavailable: {exc}") from None


def _tools(request: RunRequest, every_tool: Sequence[str] | None) -> list[str]:
    """The run's tools: those it names, else ``every_tool`` (default: every registered one)."""
    if request.tools is None and every_tool is not None:
        return list(every_tool)
    return resolve_tools(request)


def _accept(
    store: RunStore,
    record: tuple[str, str],
    token: str,
    slot: Slot | None,
    answer: dict[str, Any],
    run_id: str | None = None,
) -> None:
    """Accept the pending ``record`` (key, companion key) written with ``token``, keeping
    ``answer`` as the slot's 202.

    Raises :class:`Unavailable` if the acceptance was not sent or found nothing to accept,
    or :class:`Answered` if a request with the same key was accepted first.
    """
    kept = slot.answer(202, answer) if slot else ""
    try:
        outcome, first = store.accept(
            *record, token, run_id=run_id, slot=slot.key if slot else "", answer=kept
        )
    except redis.RedisError as exc:
        raise Unavailable(f"run store unavailable: {exc}") from None
    if outcome == "answered":
        raise Answered(first)
    if outcome == "sent":
        # Redis has it and applies it when it answers again; until then workers hold the
        # message. The work is accepted: answering 503 now would be the lie.
        log.warning("%s: acceptance sent, Redis did not answer in time", record[0])
    elif outcome != "accepted":
        raise Unavailable("the work expired before it could be accepted")
    if slot:
        slot.kept = True


def submit_run(
    app: Celery,
    store: RunStore,
    request: RunRequest,
    tenant: str,
    slot: Slot | None = None,
    every_tool: Sequence[str] | None = None,
) -> str:
    """Create a run and enqueue its first step; the run ID is the task ID.

    ``request`` must have passed :func:`agentfleet.tasks.models.limit_problems` (its chain
    resolves). ``slot``: the request's Idempotency-Key, whose answer is kept as the run is accepted.
    ``every_tool`` is what ``tools`` omitted stands for
    (:func:`agentfleet.producer.fleet.every_tool`).
    """
    run_id, token = str(uuid.uuid4()), uuid.uuid4().hex
    REQUEST_RUN_ID.set(run_id)  # log lines of the rest of this request name the run
    chain = resolve_chain(store.settings, request.model, request.providers)
    try:
        store.create_run(
            run_id, request, _tools(request, every_tool), chain, tenant=tenant, pending=token
        )
    except redis.RedisError as exc:
        raise Unavailable(f"run store unavailable: {exc}") from None
    _publish(app, names.RUN, run_id, kwargs={"request": None})
    messages = keys.run_messages(store.settings.key_prefix, run_id)
    answer = accepted_body("runs", run_id)
    _accept(store, (store.run_key(run_id), messages), token, slot, answer, run_id=run_id)
    log.info("run %s enqueued", run_id)
    return run_id


def tool_call_key(tenant: str, call_id: str | None) -> str:
    """The stored ID of a tool call: a caller's own ID lives in its tenant's namespace."""
    return f"{tenant}.{call_id}" if call_id else str(uuid.uuid4())


def submit_tool_call(
    app: Celery, store: RunStore, request: ToolCallRequest, tenant: str, slot: Slot | None = None
) -> tuple[str, bool]:
    """Create and enqueue one tool call. Returns (id, created); an existing ID is not re-sent.

    ``slot``: the request's Idempotency-Key, whose answer is kept as the call is accepted.
    """
    call_id, token = tool_call_key(tenant, request.id), uuid.uuid4().hex
    try:
        created = store.create_tool_call(
            call_id, request.name, request.arguments, tenant=tenant, pending=token
        )
    except redis.RedisError as exc:
        raise Unavailable(f"run store unavailable: {exc}") from None
    if created < 0:
        raise InProgress(f"tool call {request.id!r} is being created by another request; retry")
    if not created:
        return call_id, False
    soft, hard = time_limits(request.name, store.settings)
    payload = tool_payload(call_id, request.name, request.arguments, accept=token)
    _publish(app, names.TOOL_CALL, call_id, args=(payload,), soft_time_limit=soft, time_limit=hard)
    key = store.tool_key(call_id)
    answer = accepted_body("tool-calls", request.id or call_id)
    _accept(store, (key, key), token, slot, answer)
    return call_id, True


def submit_batch(
    app: Celery,
    store: RunStore,
    request: BatchRequest,
    tenant: str,
    slot: Slot | None = None,
    every_tool: Sequence[str] | None = None,
) -> str:
    """Write every item's record, then the batch, pending; publish one dispatch task; accept.

    ``request`` must have passed :func:`agentfleet.tasks.models.batch_problems`; ``slot`` and
    ``every_tool`` are as for :func:`submit_run`. The items are written ready to run, but only
    the dispatch of an accepted batch starts them (the watchdog leaves the runs of a batch
    never accepted alone).
    """
    batch_id, token = str(uuid.uuid4()), uuid.uuid4().hex
    settings = store.settings
    runs: list[tuple[str, RunRequest, list[str], list[Target]]] = []
    items: list[str] = []
    tools: list[tuple[str, ToolCallItem]] = []
    for item in request.items:
        if isinstance(item, ToolCallItem):
            call_id = str(uuid.uuid4())
            tools.append((call_id, item))
            items.append(keys.item(keys.TOOL_ITEM, call_id))
            continue
        run = item.as_run() if isinstance(item, PromptItem) else item
        run_id = str(uuid.uuid4())
        chain = resolve_chain(settings, run.model, run.providers)
        runs.append((run_id, run, _tools(run, every_tool), chain))
        items.append(keys.item(keys.RUN_ITEM, run_id))
    key = batch_key(store, batch_id)
    items_key = keys.batch_items(settings.key_prefix, batch_id)
    record: dict[str, str | int | float] = {
        "id": batch_id,
        "tenant": tenant,
        "status": "queued",
        "total": len(items),
        "completed": 0,
        "metadata": json.dumps(request.metadata),
        "created_at": time.time(),
        "pending": token,
    }
    if request.callback_url:
        record["callback_url"] = str(request.callback_url)
    try:
        for start in range(0, len(runs), 500):
            store.create_runs(runs[start : start + 500], tenant=tenant, batch_id=batch_id)
        pipe = store.redis.pipeline(transaction=False)
        for call_id, tool in tools:
            store.create_tool_call(
                call_id, tool.name, tool.arguments, tenant=tenant, batch_id=batch_id, client=pipe
            )
        pipe.hset(key, mapping=cast(Any, record))
        for start in range(0, len(items), 1000):
            pipe.rpush(items_key, *items[start : start + 1000])
        pipe.pexpire(key, store.pending_ms())
        pipe.pexpire(items_key, store.pending_ms())
        pipe.execute()
        _publish(app, names.BATCH_DISPATCH, args=(batch_id,), argsrepr=f"({batch_id!r})")
        _accept(store, (key, items_key), token, slot, accepted_body("batches", batch_id))
    except (redis.RedisError, Unavailable, Answered) as exc:
        # Never started, and harmless if left: tidy up without holding the answer.
        threading.Thread(target=_drop_items, args=(store, runs, tools), daemon=True).start()
        if isinstance(exc, redis.RedisError):
            raise Unavailable(f"run store unavailable: {exc}") from None
        raise
    return batch_id


def _drop_items(
    store: RunStore,
    runs: list[tuple[str, RunRequest, list[str], list[Target]]],
    tools: list[tuple[str, ToolCallItem]],
) -> None:
    with contextlib.suppress(redis.RedisError):
        store.delete_records([r[0] for r in runs], [call_id for call_id, _ in tools])
