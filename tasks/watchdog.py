"""The watchdog: finds runs whose progress is overdue and sends their next message again.

Late acks cover a worker that dies while it runs a task: the message goes back to its queue
after the visibility timeout. They do not cover a message that no worker holds and no queue
has: the Redis transport pops a message and only then records it as unacknowledged, and a
SIGKILL between the two loses it; a publish can also die with the process making it. If that
message was a run's next step or one of its tool calls, nothing would ever move the run again.

Every progress point of a run (created, step begun, step dispatched, retry scheduled, tool
begun or finished) sets the time by which the next one is due in ``<p>:runs:active`` (see
:mod:`agentfleet.tasks.store`): what the stage may take plus ``stall_timeout``. Each worker runs a
:class:`Watchdog` thread; one sweep per ``watchdog_interval`` wins a Redis lock fleet-wide and
sends the next message of each overdue run again. Steps and tool calls are idempotent, so a
message sent again that was not lost after all finds its work done and does nothing; resends
back off (``stall_timeout`` doubling) so a deep backlog is not flooded with duplicates. A tool
call whose deliveries are used up (``max_redeliveries``, each one losing its worker) is not
sent again: its failure is stored, as the delivery after its last would store it.

A resent step is not a member of an enclosing batch chord; the batch's own sweep collects it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery

from agentfleet.tasks import children, keys, tracing, waits
from agentfleet.tasks.agent import completion_from_transcript, tool_signatures
from agentfleet.tasks.batch import batch_state
from agentfleet.tasks.errors import NotWaiting
from agentfleet.tasks.lifecycle import follow_up, start_run, step_signature
from agentfleet.tasks.records import RunRecord
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.states import RunStatus
from agentfleet.tasks.store import RunStore, get_store
from agentfleet.tasks.toolcall import redelivery_failure

log = logging.getLogger(__name__)

#: Overdue runs handled per sweep; the rest wait for the next one.
SWEEP_BATCH = 500
#: Resends of one run back off up to ``stall_timeout * 2**MAX_BACKOFF_DOUBLINGS`` apart.
MAX_BACKOFF_DOUBLINGS = 5


@dataclass(frozen=True)
class Recovery:
    """What a sweep did for one overdue run.

    ``action``: ``forgotten`` (final, gone, or of a batch the API never accepted), ``held`` (a
    worker holds it; wait for its lease), ``waiting`` (its tenant is at its cap: the run that
    frees a slot starts it; or its batch is not accepted yet), ``entry`` (step 1 sent again),
    ``step`` (the step after a finished tool chord sent again, perhaps after storing the failure
    of calls that used up their deliveries), ``tools`` (tool calls that no worker holds and no
    result answers sent again) or ``timed_out`` (a wait for a person ended by its policy).
    """

    run_id: str
    action: str
    detail: str = ""


def sweep(app: Celery, settings: Settings, limit: int = SWEEP_BATCH) -> list[Recovery]:
    """One pass over the overdue runs."""
    store = get_store(settings)
    return [recover(app, settings, store, run_id) for run_id in store.overdue(limit)]


def recover(app: Celery, settings: Settings, store: RunStore, run_id: str) -> Recovery:
    """Send the next message of one overdue run again, if no worker is on it."""
    run = store.get_run(run_id)
    if run is None or run.terminal:
        store.forget(run_id)
        return Recovery(run_id, "forgotten")
    if run.status is RunStatus.WAITING:
        # Due only at its wait's deadline: a person did not decide in time.
        return _wait_timed_out(app, store, run)
    batch = _unaccepted_batch(store, run)
    if batch == "missing":
        # Written for a batch the API never accepted: nothing of it may start.
        store.forget(run_id)
        return Recovery(run_id, "forgotten")
    if batch == "pending":
        store.touch(run_id, settings.limits.stall_timeout)
        return Recovery(run_id, "waiting")
    if store.holds_lease(run_id):
        # A step is running, or its worker died: the lease lapses within the hard limit and
        # Celery redelivers the step; look again after that.
        store.touch(run_id, settings.limits.step_time_limit)
        return Recovery(run_id, "held")
    if store.waits_for_slot(run):
        # Its tenant is at its cap: the run that frees a slot starts it. Look again later.
        store.touch(run_id, settings.limits.stall_timeout)
        return Recovery(run_id, "waiting")
    resends = int(store.redis.hincrby(store.run_key(run_id), "watchdog_resends", 1))
    doublings = min(resends - 1, MAX_BACKOFF_DOUBLINGS)
    store.touch(run_id, settings.limits.stall_timeout * (2**doublings - 1))
    with tracing.within(run.traceparent):  # what it sends joins the run's trace
        recovery = _resend(app, settings, store, run_id, run)
    log.warning(
        "run %s made no progress in time: %s %s (resend %d)",
        run_id,
        recovery.action,
        recovery.detail,
        resends,
    )
    return recovery


def _wait_timed_out(app: Celery, store: RunStore, run: RunRecord) -> Recovery:
    """End the wait of ``run`` by its ``on_wait_timeout`` policy: fail the run, or decide
    its pending calls (denied, or a question answered with the run's default)."""
    if run.on_wait_timeout != "fail":
        with contextlib.suppress(NotWaiting):  # decided by a person in the meantime
            waits.decide(app, store, run, "", waits.timeout_decisions(run))
        return Recovery(run.id, "timed_out", run.on_wait_timeout)
    error = {"code": "wait_timeout", "message": f"no one decided within {run.wait_timeout:g}s"}
    finished = store.finish_step(run.id, 0, "", status=RunStatus.FAILED, error=error)
    follow_up(app, store, run.id, finished)
    if finished.final:
        # No message of the run is queued: send one that records its end under the run ID.
        start_run(app, store, run.id)
    return Recovery(run.id, "timed_out", "fail")


def _unaccepted_batch(store: RunStore, run: RunRecord) -> str:
    """``missing`` or ``pending`` for a queued run of a batch not accepted; else ``''``."""
    if not run.batch_id or run.status != RunStatus.QUEUED:
        return ""
    state, _ = batch_state(store, run.batch_id)
    return "" if state == "accepted" else state


def _resend(
    app: Celery, settings: Settings, store: RunStore, run_id: str, run: RunRecord
) -> Recovery:
    dispatched = run.dispatched_step
    if dispatched == 0:
        start_run(app, store, run_id)  # with its batch chord membership, if it was throttled
        return Recovery(run_id, "entry")
    count = run.tool_calls(dispatched)
    call_ids = [keys.tool_call_id(run_id, dispatched, i) for i in range(count)]
    gen = run.gen(dispatched)
    results = store.dispatched_results(run)
    if run.subagents and any(r is None for r in results):
        running = _children_running(store, run, call_ids, results)
        results = store.dispatched_results(run)
        if running:
            return Recovery(run_id, "children", f"{running} running")
    if any(r is None for r in results):
        sent = _tools_again(app, settings, store, run, call_ids, results, gen)
        results = store.dispatched_results(run)
        if sent or any(r is None for r in results):
            return Recovery(run_id, "tools", f"{sent} of {count}")
    body = step_signature(app, run_id, dispatched + 1).set(task_id=run_id)
    body.apply_async((results,))
    return Recovery(run_id, "step", f"{dispatched + 1}")


def _children_running(
    store: RunStore, run: RunRecord, call_ids: list[str], results: list[dict[str, Any] | None]
) -> int:
    """How many of the step's child runs are not final. A final child whose end is not
    stored as its call's result (its worker died in between) gets it stored now."""
    running = 0
    for call_id, result in zip(call_ids, results, strict=True):
        child = store.get_run(call_id) if result is None else None
        if child is None or child.parent_id != run.id:
            continue
        if child.terminal:
            children.report(store, child)
        else:
            running += 1  # its own place in the worklist moves it: nothing to send here
    return running


def _tools_again(
    app: Celery,
    settings: Settings,
    store: RunStore,
    run: RunRecord,
    call_ids: list[str],
    results: list[dict[str, Any] | None],
    gen: str,
) -> int:
    """Send again each of the run's last tool calls (``call_ids``) that no result answers and
    no worker holds, or store its failure if its deliveries are used up; returns how many were
    sent."""
    run_id, step = run.id, run.dispatched_step
    calls = _tool_calls_of(store.messages(run_id))
    signatures = tool_signatures(app, settings, run_id, step, run, calls, gen)
    attempts = store.unheld_tool_attempts(call_ids)
    sent = 0
    for signature, result, begun in zip(signatures, results, attempts, strict=True):
        if result is not None or begun is None or signature.args[0]["name"] in run.subagents:
            continue  # a child run is recovered as a run of its own
        payload = signature.args[0]
        if begun >= settings.limits.max_redeliveries:
            # Every delivery began it and lost its worker. A delivery that begins it now is
            # refused (agentfleet.tasks.scripts.BEGIN_TOOL) and stores this same failure: first one
            # wins.
            failure = redelivery_failure(payload, settings.limits.max_redeliveries)
            store.complete_tool(payload["id"], "", failure, run_id, step)
        else:
            # Outside the chord: the result lands in the store, and a later sweep sends the step.
            signature.apply_async()
            sent += 1
    return sent


def _tool_calls_of(messages: list[dict[str, Any]]) -> list[Any]:
    """The tool calls of the last assistant message that made any."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "assistant" and messages[index].get("tool_calls"):
            return completion_from_transcript(messages[: index + 1]).tool_calls
    return []


class Watchdog(threading.Thread):
    """Sweeps in the background of a worker; one sweep per interval wins fleet-wide."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        super().__init__(name="agentfleet-watchdog", daemon=True)
        self.app, self.settings = app, settings
        self._stopped = threading.Event()
        self._token = uuid.uuid4().hex

    def run(self) -> None:
        interval = self.settings.limits.watchdog_interval
        while not self._stopped.wait(interval * random.uniform(0.8, 1.2)):
            try:
                if self._my_turn(interval):
                    sweep(self.app, self.settings)
            except Exception:
                # Redis down, a broker hiccup: the next sweep tries again.
                log.exception("watchdog sweep failed")

    def _my_turn(self, interval: float) -> bool:
        store = get_store(self.settings)
        key = keys.watchdog_sweep(self.settings.redis.key_prefix)
        return bool(store.redis.set(key, self._token, nx=True, px=int(interval * 900)))

    def stop(self) -> None:
        self._stopped.set()


_running: Watchdog | None = None


def start(app: Celery, settings: Settings) -> None:
    """Start this process's watchdog (once)."""
    global _running
    if _running is None:
        _running = Watchdog(app, settings)
        _running.start()


def stop() -> None:
    if _running is not None:
        _running.stop()
