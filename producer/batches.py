"""Cancelling a batch: every item that is not final is cancelled, in pipelined round trips."""

from __future__ import annotations

from celery import Celery

from agentfleet.tasks import keys
from agentfleet.tasks.batch import batch_key, items_of
from agentfleet.tasks.lifecycle import batch_finished, follow_up
from agentfleet.tasks.states import BatchStatus
from agentfleet.tasks.store import RunStore

REASON = "batch cancelled"
#: Items cancelled per pipelined round trip.
CHUNK = 1000


def cancel_items(app: Celery, store: RunStore, batch_id: str) -> int:
    """Mark the batch cancelled (so an undispatched one never publishes) and cancel its
    items; returns how many were cancelled."""
    store.redis.hset(batch_key(store, batch_id), "status", BatchStatus.CANCELLED.value)
    items = [keys.parse_item(item) for item in items_of(store, batch_id)]
    runs = [ident for kind, ident in items if kind == keys.RUN_ITEM]
    calls = [ident for kind, ident in items if kind != keys.RUN_ITEM]
    cancelled = 0
    for start in range(0, len(runs), CHUNK):
        chunk = runs[start : start + CHUNK]
        for run_id, (outcome, finished) in zip(
            chunk, store.cancel_runs(chunk, REASON), strict=True
        ):
            if finished is not None:
                follow_up(app, store, run_id, finished)
            cancelled += outcome == "cancelled"
    for start in range(0, len(calls), CHUNK):
        for outcome, batch in store.cancel_tool_calls(calls[start : start + CHUNK], REASON):
            batch_finished(app, batch)
            cancelled += outcome == "cancelled"
    return cancelled
