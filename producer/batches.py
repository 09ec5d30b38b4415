"""Cancelling a batch: every item that is not final is cancelled, in pipelined round trips."""

from __future__ import annotations

from celery import Celery

from tasks.batch import batch_key, items_of
from tasks.lifecycle import batch_finished, follow_up
from tasks.store import RunStore

REASON = "batch cancelled"


def cancel_items(app: Celery, store: RunStore, batch_id: str) -> int:
    """Mark the batch cancelled (so an undispatched one never publishes) and cancel its
    items; returns how many were cancelled."""
    store.redis.hset(batch_key(store, batch_id), "status", "cancelled")
    cancelled = 0
    for item in items_of(store, batch_id):
        kind, _, ident = item.partition(":")
        if kind == "run":
            outcome, finished = store.cancel_run(ident, REASON)
            follow_up(app, store, ident, finished)
        else:
            outcome, batch = store.cancel_tool_call(ident, REASON)
            batch_finished(app, batch)
        cancelled += outcome == "cancelled"
    return cancelled
