"""Batches: many runs or tool calls as one chord whose body collects.

The API writes every item's record in pipelined round trips and publishes one
``agentfleet.batch.dispatch``; that task, on the ``batch`` queue, publishes the chord (the
items as its header, ``agentfleet.batch.collect`` as its body), so the request thread never
publishes per item. Each item is a run or tool call of its own, pollable by its ID.

Progress does not wait for the chord: each item that becomes final bumps the batch's
counters in the same Lua script (:mod:`agentfleet.tasks.scripts`), and the item that completes the
count also sends the collector. Collecting is idempotent (the first stored result wins), so the
chord body and that trigger may both arrive; either suffices, which also covers an item whose chord
membership was lost (a run resent by the watchdog).

Keys (``<p>`` is the key prefix)::

    <p>:batch:<id>          hash: tenant, status, total, completed, n_<status>, result, ...
    <p>:batch:<id>:items    list: ``run:<id>`` or ``tool:<id>`` per item, in request order
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

from celery import Celery, Task, chord

from agentfleet.tasks import keys, names
from agentfleet.tasks.lifecycle import pending_countdown
from agentfleet.tasks.records import BatchRecord, RunRecord, ToolCallRecord
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.states import BatchStatus, ToolCallStatus
from agentfleet.tasks.store import RunStore, get_store, parse_tool_call
from agentfleet.tasks.toolcall import time_limits, tool_payload
from agentfleet.tasks.views import iso, run_error, run_view, tool_call_view

log = logging.getLogger(__name__)

#: Items whose errors the aggregate names; the rest are counted.
MAX_NAMED_FAILURES = 1000
#: The final statuses the aggregate names items of (runs and tool calls spell them alike).
_UNSUCCESSFUL = frozenset({ToolCallStatus.FAILED, ToolCallStatus.CANCELLED})


def batch_key(store: RunStore, batch_id: str) -> str:
    return keys.batch(store.settings.redis.key_prefix, batch_id)


def batch_record(store: RunStore, batch_id: str) -> BatchRecord | None:
    """The batch's record; None if there is none (or only counters that final items added
    after it expired)."""
    fields = cast(dict[str, str], store.redis.hgetall(batch_key(store, batch_id)))
    return BatchRecord.parse(fields) if "id" in fields else None


def batch_state(store: RunStore, batch_id: str) -> tuple[str, float]:
    """``(accepted | pending | missing, seconds the pending state lasts at most)``.

    The API writes a batch pending and accepts it once its dispatch is published; a batch
    never accepted expires, and nothing of it may start.
    """
    pipe = store.redis.pipeline(transaction=False)
    key = batch_key(store, batch_id)
    pipe.hmget(key, "id", "pending")
    pipe.pttl(key)
    (ident, pending), pttl = pipe.execute()
    if ident is None:
        return "missing", 0.0
    return ("pending" if pending else "accepted"), max(int(pttl), 0) / 1000


def item_signature(app: Celery, settings: Settings, item: str, call: ToolCallRecord | None) -> Any:
    """The message of one item; ``call`` is a tool call's record (unused for runs)."""
    kind, ident = keys.parse_item(item)
    if kind == "run":
        return app.signature(names.RUN, task_id=ident)
    name = call.name if call else ""
    arguments = call.arguments if call and call.arguments is not None else {}
    soft, hard = time_limits(name, settings)
    payload = tool_payload(ident, name, arguments)
    return app.signature(
        names.TOOL_CALL, args=(payload,), task_id=ident, soft_time_limit=soft, time_limit=hard
    )


def items_of(store: RunStore, batch_id: str, start: int = 0, stop: int = -1) -> list[str]:
    return cast(
        list[str],
        store.redis.lrange(
            keys.batch_items(store.settings.redis.key_prefix, batch_id), start, stop
        ),
    )


#: An item's record: None once it expired.
ItemRecord = RunRecord | ToolCallRecord | None


def item_records(store: RunStore, items: list[str]) -> list[ItemRecord]:
    """The records of ``items``, in one round trip."""
    pipe = store.redis.pipeline(transaction=False)
    parsed = [keys.parse_item(item) for item in items]
    for kind, ident in parsed:
        pipe.hgetall(store.run_key(ident) if kind == keys.RUN_ITEM else store.tool_key(ident))
    records: list[ItemRecord] = []
    for (kind, ident), data in zip(parsed, cast(list[dict[str, str]], pipe.execute()), strict=True):
        if kind != keys.RUN_ITEM:
            records.append(parse_tool_call(ident, data))
        else:
            records.append(RunRecord.parse(data) if data else None)
    return records


def aggregate(store: RunStore, batch_id: str) -> dict[str, Any]:
    """Counts by status and the failed items with their errors."""
    counts: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    items = items_of(store, batch_id)
    for start in range(0, len(items), 1000):
        chunk = items[start : start + 1000]
        for item, record in zip(chunk, item_records(store, chunk), strict=True):
            status = "missing" if record is None else record.status.value
            counts[status] = counts.get(status, 0) + 1
            if record and status in _UNSUCCESSFUL and len(failures) < MAX_NAMED_FAILURES:
                ident = keys.parse_item(item)[1]
                failures.append({"id": ident, "status": status, "error": _error(record)})
    return {"total": len(items), "counts": counts, "failed_items": failures}


def _error(record: RunRecord | ToolCallRecord) -> Any:
    if isinstance(record, RunRecord):
        return run_error(record)
    return (record.result or {}).get("error")


def _item_view(item: str, record: ItemRecord) -> dict[str, Any]:
    kind, ident = keys.parse_item(item)
    if record is None:
        return {"id": ident, "kind": kind, "status": "missing", "result": None, "error": None}
    if isinstance(record, RunRecord):
        view = run_view(record)
        return {
            "id": ident,
            "kind": kind,
            "status": view["status"],
            "result": view["result"],
            "error": view["error"],
        }
    view = tool_call_view(record)
    result = view["result"] or {}
    return {
        "id": ident,
        "kind": "tool_call",
        "status": view["status"],
        "result": result.get("output") if result.get("ok") else None,
        "error": None if result.get("ok", True) else result.get("error"),
    }


def batch_view(
    store: RunStore, batch: BatchRecord, offset: int = 0, limit: int = 100
) -> dict[str, Any]:
    """A batch as callers see it, with one page of its items."""
    items = items_of(store, batch.id, offset, offset + limit - 1) if limit > 0 else []
    records = item_records(store, items)
    counts = batch.counts
    return {
        "id": batch.id,
        "status": batch.status.value,
        "total": batch.total,
        "completed": batch.completed,
        "counts": {
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "cancelled": counts.cancelled,
        },
        "items": [_item_view(i, r) for i, r in zip(items, records, strict=True)],
        "items_offset": offset,
        "result": batch.result,
        "metadata": batch.metadata,
        "created_at": iso(batch.created_at),
        "finished_at": iso(batch.finished_at),
    }


def register(app: Celery, settings: Settings) -> None:
    @app.task(name=names.BATCH_DISPATCH, bind=True, shared=False, acks_late=True, max_retries=None)
    def dispatch(self: Task, batch_id: str) -> None:
        """Publish the batch's chord (unless it was cancelled first)."""
        store = get_store(settings)
        key = batch_key(store, batch_id)
        state, wait_s = batch_state(store, batch_id)
        if state == "pending":
            raise self.retry(countdown=pending_countdown(wait_s, self.request.retries))
        if state == "missing":
            log.info("batch %s was never accepted: not dispatched", batch_id)
            return
        # Once: a redelivered dispatch must not publish the items twice.
        if not store.redis.hsetnx(key, "dispatched_at", time.time()):
            return
        if store.redis.hget(key, "status") == BatchStatus.CANCELLED:
            return
        store.redis.hset(key, "status", BatchStatus.RUNNING.value)
        items = items_of(store, batch_id)
        calls = [i for i in items if keys.parse_item(i)[0] != keys.RUN_ITEM]
        records = {  # one pipeline
            i: r
            for i, r in zip(calls, item_records(store, calls), strict=True)
            if isinstance(r, ToolCallRecord)
        }
        header = [item_signature(self.app, settings, i, records.get(i)) for i in items]
        # Immutable: the collector reads the records, so the body message does not carry
        # every item's result (megabytes for a large batch).
        body = self.app.signature(names.BATCH_COLLECT, args=(None, batch_id), immutable=True)
        chord(header, body).apply_async()

    @app.task(name=names.BATCH_COLLECT, bind=True, shared=False)
    def collect(self: Task, results: Any, batch_id: str) -> dict[str, Any] | None:
        """Aggregate a finished batch (chord body, or sent by its last item)."""
        store = get_store(settings)
        key = batch_key(store, batch_id)
        batch = batch_record(store, batch_id)
        if batch is None or batch.result is not None:
            return None
        if batch.completed < batch.total:
            return None  # the chord fired early only if an item was counted elsewhere
        summary = aggregate(store, batch_id)
        if not store.redis.hsetnx(key, "result", json.dumps(summary)):
            return None  # collected by the other trigger
        cancelled = batch.status is BatchStatus.CANCELLED
        status = BatchStatus.CANCELLED if cancelled else BatchStatus.COMPLETED
        store.redis.hset(key, mapping={"status": status.value, "finished_at": time.time()})
        log.info("batch %s %s: %s", batch_id, status.value, summary["counts"])
        if batch.callback_url:
            self.app.send_task(names.CALLBACK, args=("batch", batch_id))
        return summary
