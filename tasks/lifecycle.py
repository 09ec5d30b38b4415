"""What follows a run's transition: a waiting run that now has a slot, a batch whose last item
finished, a completion callback. The store's scripts say which; this module starts them."""

from __future__ import annotations

import json
import logging
import random
from typing import Any

from celery import Celery, Signature

from agentfleet.tasks import names, tracing
from agentfleet.tasks.store import Finished, RunStore

log = logging.getLogger(__name__)

#: The options of a run's entry message that place it in an enclosing chord (a batch): kept
#: when a run has to wait for a slot, so that starting it later keeps its place.
ENTRY_OPTIONS = ("chord", "group_id", "group_index", "root_id")
#: First and longest wait before a worker looks again at work the API has not accepted yet.
PENDING_POLL = 0.05
PENDING_POLL_MAX = 2.0


def pending_countdown(wait_s: float, retries: int) -> float:
    """When to look again at work the API has published but not accepted yet: soon (it
    accepts right after publishing), then backing off, and not after its records expire
    (in ``wait_s``); ``retries``: how often this message was retried already."""
    backoff: float = min(PENDING_POLL * 2.0 ** min(retries, 6), PENDING_POLL_MAX)
    return min(backoff, wait_s) + random.uniform(0.01, 0.05)


def entry_options(request: Any) -> dict[str, Any]:
    """The chord membership of the task ``request`` is running, as message options."""
    options = {name: getattr(request, name, None) for name in ENTRY_OPTIONS}
    options["group_id"] = getattr(request, "group", None)
    return {k: v for k, v in options.items() if v is not None}


def start_run(app: Celery, store: RunStore, run_id: str) -> None:
    """Publish a run's next message again, with the chord membership it was sent with, in the
    run's own trace (this may run in a step of another run): the step that waited for a person
    (``parked_step``), which finds its answer applied and dispatches its tool calls; the step
    after its children's, with their results, for a parent that waited for its tenant's slot
    when they ended; else its entry message (also for a run made final meanwhile, so that a
    worker records its end)."""
    run = store.get_run(run_id)
    if run is None:
        app.signature(names.RUN, task_id=run_id).apply_async()  # it finds the run gone
        return
    options = json.loads(run.fields.get("entry") or "{}")
    parked = int(run.fields.get("parked_step") or 0)
    results: tuple[Any, ...] = ()
    with tracing.within(run.traceparent):
        if run.terminal:
            message = app.signature(names.RUN)
        elif parked > run.dispatched_step:
            message = app.signature(names.AGENT_STEP, args=(None, run_id, parked))
        elif run.dispatched_step and "needs_slot" in run.fields:
            message = step_signature(app, run_id, run.dispatched_step + 1)
            results = (store.dispatched_results(run),)
        else:
            message = app.signature(names.RUN)
        message.set(task_id=run_id, **options).apply_async(results)


def step_signature(app: Celery, run_id: str, step: int) -> Signature:
    """Step ``step`` of ``run_id``, to be called with the previous step's tool results."""
    body = app.signature(names.AGENT_STEP, args=(run_id, step))
    body.on_error(app.signature(names.TOOLS_FAILED))
    if trace := tracing.headers():
        # Its parent is the span that built it (a step, the watchdog within the run's trace),
        # not the tool call that happens to finish last and publish it (agentfleet.tasks.tracing).
        body.set(headers=trace)
    return body


def follow_up(app: Celery, store: RunStore, run_id: str, finished: Finished) -> None:
    """Start what ``finished`` says must start. Each is idempotent where it lands."""
    # A freed tenant slot and the end of a thread's turn can each start a run.
    for kicked in finished.kick.split():
        log.info("run %s finished; run %s takes its place", run_id, kicked)
        start_run(app, store, kicked)
    if finished.resend:
        start_run(app, store, finished.resend)  # it finds the run final, and ends as it did
    batch_finished(app, finished.batch)
    if finished.final and finished.record.callback_url:
        app.send_task(names.CALLBACK, args=("run", run_id))


def batch_finished(app: Celery, batch_id: str) -> None:
    """Send the collector of a batch whose last item just finished (``''``: none did)."""
    if batch_id:
        app.send_task(names.BATCH_COLLECT, args=(None, batch_id))
