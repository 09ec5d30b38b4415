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
from agentfleet.tasks.records import RunRecord
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.store import RunStore, get_store
from agentfleet.tasks.toolcall import time_limits, tool_payload
from agentfleet.tasks.views import iso, run_view, tool_call_view

log = logging.getLogger(__name__)

#: Items whose errors the aggregate names; the rest are counted.
MAX_NAMED_FAILURES = 1000


def batch_key(store: RunStore, batch_id: str) -> str:
    return keys.batch(store.settings.key_prefix, batch_id)


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


def item_signature(app: Celery, settings: Settings, item: str, record: dict[str, str]) -> Any:
    """The message of one item; ``record`` is a tool call's record (unused for runs)."""
    kind, ident = keys.parse_item(item)
    if kind == "run":
        return app.signature(names.RUN, task_id=ident)
    name = record.get("name", "")
    soft, hard = time_limits(name, settings)
    payload = tool_payload(ident, name, json.loads(record.get("arguments") or "{}"))
    return app.signature(
        names.TOOL_CALL, args=(payload,), task_id=ident, soft_time_limit=soft, time_limit=hard
    )


def items_of(store: RunStore, batch_id: str, start: int = 0, stop: int = -1) -> list[str]:
    return cast(
        list[str],
        store.redis.lrange(keys.batch_items(store.settings.key_prefix, batch_id), start, stop),
    )


def item_records(store: RunStore, items: list[str]) -> list[dict[str, str]]:
    pipe = store.redis.pipeline(transaction=False)
    for item in items:
        kind, ident = keys.parse_item(item)
        pipe.hgetall(store.run_key(ident) if kind == "run" else store.tool_key(ident))
    return cast(list[dict[str, str]], pipe.execute())


def aggregate(store: RunStore, batch_id: str) -> dict[str, Any]:
    """Counts by status and the failed items with their errors."""
    counts: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    items = items_of(store, batch_id)
    for start in range(0, len(items), 1000):
        chunk = items[start : start + 1000]
        for item, record in zip(chunk, item_records(store, chunk), strict=True):
            status = record.get("status", "missing")
            counts[status] = counts.get(status, 0) + 1
            if status in ("failed", "cancelled") and len(failures) < MAX_NAMED_FAILURES:
                failures.append(
                    {"id": keys.parse_item(item)[1], "status": status, **_error(record)}
                )
    return {"total": len(items), "counts": counts, "failed_items": failures}


def _error(record: dict[str, str]) -> dict[str, Any]:
    if record.get("error"):
        return {"error": json.loads(record["error"])}
    result = json.loads(record.get("result") or "{}") if record.get("name") else {}
    return {"error": result.get("error")} if isinstance(result, dict) else {}


def _item_view(item: str, record: dict[str, str]) -> dict[str, Any]:
    kind, ident = keys.parse_item(item)
    if not record:
        return {"id": ident, "kind": kind, "status": "missing", "result": None, "error": None}
    if kind == keys.RUN_ITEM:
        view = run_view(RunRecord.parse(record))
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
    store: RunStore, record: dict[str, str], offset: int = 0, limit: int = 100
) -> dict[str, Any]:
    """A batch as callers see it, with one page of its items."""
    items = items_of(store, record["id"], offset, offset + limit - 1) if limit > 0 else []
    records = item_records(store, items)
    return {
        "id": record["id"],
        "status": record.get("status", "queued"),
        "total": int(record.get("total") or 0),
        "completed": int(record.get("completed") or 0),
        "counts": {s: int(record.get(f"n_{s}") or 0) for s in ("succeeded", "failed", "cancelled")},
        "items": [_item_view(i, r) for i, r in zip(items, records, strict=True)],
        "items_offset": offset,
        "result": json.loads(record["result"]) if record.get("result") else None,
        "metadata": json.loads(record.get("metadata") or "{}"),
        "created_at": iso(record.get("created_at")),
        "finished_at": iso(record.get("finished_at")),
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
        if store.redis.hget(key, "status") == "cancelled":
            return
        store.redis.hset(key, "status", "running")
        items = items_of(store, batch_id)
        calls = [i for i in items if keys.parse_item(i)[0] != keys.RUN_ITEM]
        records = dict(zip(calls, item_records(store, calls), strict=True))  # one pipeline
        header = [item_signature(self.app, settings, i, records.get(i, {})) for i in items]
        # Immutable: the collector reads the records, so the body message does not carry
        # every item's result (megabytes for a large batch).
        body = self.app.signature(names.BATCH_COLLECT, args=(None, batch_id), immutable=True)
        chord(header, body).apply_async()

    @app.task(name=names.BATCH_COLLECT, bind=True, shared=False)
    def collect(self: Task, results: Any, batch_id: str) -> dict[str, Any] | None:
        """Aggregate a finished batch (chord body, or sent by its last item)."""
        store = get_store(settings)
        key = batch_key(store, batch_id)
        batch = cast(dict[str, str], store.redis.hgetall(key))
        if not batch or batch.get("result"):
            return None
        if int(batch.get("completed") or 0) < int(batch.get("total") or 0):
            return None  # the chord fired early only if an item was counted elsewhere
        summary = aggregate(store, batch_id)
        if not store.redis.hsetnx(key, "result", json.dumps(summary)):
            return None  # collected by the other trigger
        status = "cancelled" if batch.get("status") == "cancelled" else "completed"
        store.redis.hset(key, mapping={"status": status, "finished_at": time.time()})
        log.info("batch %s %s: %s", batch_id, status, summary["counts"])
        if batch.get("callback_url"):
            self.app.send_task(names.CALLBACK, args=("batch", batch_id))
        return summary
