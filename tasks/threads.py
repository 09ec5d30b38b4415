"""Conversation threads: a tenant's runs that share a history and run one at a time.

A run naming a ``thread_id`` joins the thread's queue when it is accepted; it runs when it is
first in that queue, with the thread's history in front of its input, and its turn (its input
and final answer, or with ``thread_history: full`` every message) is added to the history if it
succeeds. The transitions live in the run-store scripts (``_activate.lua``, ``begin_step.lua``,
``finalize`` in ``_common.lua``); this module reads threads for the API, deletes them, and
cancels what an ``interrupt`` run goes ahead of.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from celery import Celery

from agentfleet.tasks import keys
from agentfleet.tasks.lifecycle import follow_up
from agentfleet.tasks.store import RunStore
from agentfleet.tasks.views import iso

#: Runs a thread view lists, newest first.
RUNS_SHOWN = 100


@dataclass(frozen=True)
class ThreadKeys:
    """The keys of one thread of one tenant."""

    record: str
    messages: str
    turns: str
    queue: str
    runs: str

    @classmethod
    def of(cls, store: RunStore, tenant: str, thread_id: str) -> ThreadKeys:
        p = store.settings.redis.key_prefix
        return cls(
            keys.thread(p, tenant, thread_id),
            keys.thread_messages(p, tenant, thread_id),
            keys.thread_turns(p, tenant, thread_id),
            keys.thread_queue(p, tenant, thread_id),
            keys.thread_runs(p, tenant, thread_id),
        )

    def all(self) -> list[str]:
        return [self.record, self.messages, self.turns, self.queue, self.runs]


def unfinished(store: RunStore, tenant: str, thread_id: str) -> list[str]:
    """The thread's unfinished runs, in the order they run (the first one is running)."""
    queue = ThreadKeys.of(store, tenant, thread_id).queue
    return cast(list[str], store.redis.zrange(queue, 0, -1))


def interrupt(app: Celery, store: RunStore, tenant: str, thread_id: str, run_id: str) -> list[str]:
    """Cancel the runs of the thread ahead of ``run_id`` (a run with thread_policy
    ``interrupt``), so that it runs next; the IDs cancelled."""
    queued = unfinished(store, tenant, thread_id)
    ahead = queued[: queued.index(run_id)] if run_id in queued else queued
    cancelled = []
    for other, (outcome, finished) in zip(
        ahead, store.cancel_runs(ahead, f"interrupted by run {run_id}"), strict=True
    ):
        if finished is not None:
            follow_up(app, store, other, finished)
        if outcome == "cancelled":
            cancelled.append(other)
    return cancelled


def thread_view(
    store: RunStore, tenant: str, thread_id: str, offset: int, limit: int
) -> dict[str, Any] | None:
    """``GET /v1/threads/{id}``: the thread's record, a page of its history and its runs (newest
    first, with their status); None if the tenant has no such thread."""
    k = ThreadKeys.of(store, tenant, thread_id)
    pipe = store.redis.pipeline(transaction=False)
    pipe.hgetall(k.record)
    pipe.llen(k.messages)
    pipe.lrange(k.messages, offset, offset + limit - 1)
    pipe.llen(k.turns)
    pipe.zrange(k.queue, 0, -1)
    pipe.lrange(k.runs, -RUNS_SHOWN, -1)
    record, total, page, turns, queued, runs = pipe.execute()
    if not record:
        return None
    runs = list(reversed(runs))
    statuses = _statuses(store, runs)
    return {
        "id": thread_id,
        "created_at": iso(record.get("created_at")),
        "updated_at": iso(record.get("updated_at")),
        "turns": int(turns),
        "messages_total": int(total),
        "offset": offset,
        "messages": [json.loads(m) for m in page],
        "running": queued[0] if queued else None,
        "waiting": queued[1:],
        "runs": [{"id": r, "status": s} for r, s in zip(runs, statuses, strict=True) if s],
    }


def _statuses(store: RunStore, run_ids: list[str]) -> list[str | None]:
    pipe = store.redis.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hget(store.run_key(run_id), "status")
    return cast(list[str | None], pipe.execute())


def delete(store: RunStore, tenant: str, thread_id: str) -> tuple[bool, list[str]]:
    """Delete the thread: (whether it existed, its unfinished runs). A thread with unfinished
    runs is kept: they would write their turns into a thread that is gone."""
    k = ThreadKeys.of(store, tenant, thread_id)
    queued = unfinished(store, tenant, thread_id)
    if queued:
        return True, queued
    return bool(store.redis.delete(*k.all())), []
