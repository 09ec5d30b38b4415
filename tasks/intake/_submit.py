"""Writing work pending, publishing it, accepting it; and writing a run sent by name."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol, TypeVar, cast

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from agentfleet.tasks import keys, names, threads, tracing
from agentfleet.tasks.batch import batch_key
from agentfleet.tasks.context import REQUEST_RUN_ID
from agentfleet.tasks.errors import (
    Answered,
    InProgress,
    InvalidRequest,
    RunFailed,
    ThreadBusy,
    Unavailable,
)
from agentfleet.tasks.intake._checks import (
    AdmittedBatch,
    AdmittedRun,
    admit_run,
    transcript_problems,
)
from agentfleet.tasks.llm import Target, resolve_chain
from agentfleet.tasks.models import (
    DEFAULT_TENANT,
    TENANT_PATTERN,
    RunRequest,
    RunStatus,
    ToolCallItem,
    ToolCallRequest,
)
from agentfleet.tasks.states import BatchStatus
from agentfleet.tasks.store import RunStore
from agentfleet.tasks.toolcall import time_limits, tool_payload
from agentfleet.tasks.views import run_view

# Named for the package: where its lines come from, not which private module wrote them.
log = logging.getLogger("agentfleet.tasks.intake")

_T = TypeVar("_T")


class AnswerSlot(Protocol):
    """Where a request's Idempotency-Key keeps its answer
    (:class:`agentfleet.producer.idempotency.Slot`)."""

    key: str
    #: Set once the answer was kept in the same step that accepted the work.
    kept: bool

    def answer(self, status: int, body: dict[str, Any]) -> str:
        """The stored form of an answer to the request."""
        ...


def accepted_body(collection: str, ident: str, status: str = "queued") -> dict[str, Any]:
    """The body of a 202 for ``ident`` in ``collection`` (``runs``, ``tool-calls``, ...)."""
    return {"id": ident, "status": status, "links": {"self": f"/v1/{collection}/{ident}"}}


def tool_call_key(tenant: str, call_id: str | None) -> str:
    """The stored ID of a tool call: a caller's own ID lives in its tenant's namespace."""
    return f"{tenant}.{call_id}" if call_id else str(uuid.uuid4())


def submit_run(
    app: Celery,
    store: RunStore,
    run: AdmittedRun,
    tenant: str,
    slot: AnswerSlot | None = None,
    every_tool: Sequence[str] | None = None,
) -> str:
    """Write ``run`` pending, publish its first step, accept it; the run ID, which is the
    task ID. ``slot``: the request's Idempotency-Key, whose answer is kept as the run is
    accepted. ``every_tool`` is what ``tools`` omitted stands for
    (:func:`agentfleet.producer.fleet.every_tool`)."""
    run_id, token = str(uuid.uuid4()), uuid.uuid4().hex
    REQUEST_RUN_ID.set(run_id)  # log lines of the rest of this request name the run
    tracing.tag_run(run_id)  # and so does its span, the run's trace's first
    request = run.prepared(run_id, tenant)
    _write(
        lambda: store.create_run(
            run_id, request, run.tools(every_tool), run.chain, tenant=tenant, pending=token
        )
    )
    _publish(app, names.RUN, run_id, kwargs={"request": None})
    messages = keys.run_messages(store.settings.redis.key_prefix, run_id)
    answer = accepted_body("runs", run_id)
    _accept(store, (store.run_key(run_id), messages), token, slot, answer, run_id=run_id)
    log.info("run %s enqueued", run_id)
    _interrupt(app, store, request, tenant, run_id)
    return run_id


def _interrupt(app: Celery, store: RunStore, request: RunRequest, tenant: str, run_id: str) -> None:
    """A run with thread_policy ``interrupt``, once accepted, cancels the runs ahead of it on
    its thread: the one running and those waiting."""
    if request.thread_id and request.thread_policy == "interrupt":
        cancelled = threads.interrupt(app, store, tenant, request.thread_id, run_id)
        if cancelled:
            log.info("run %s interrupted %s on its thread", run_id, ", ".join(cancelled))


def submit_tool_call(
    app: Celery,
    store: RunStore,
    request: ToolCallRequest,
    tenant: str,
    slot: AnswerSlot | None = None,
) -> tuple[str, bool]:
    """Write, publish and accept one tool call admitted by :func:`admit_tool_call`. Returns
    (id, created); an existing ID is not sent again. ``slot`` as for :func:`submit_run`."""
    call_id, token = tool_call_key(tenant, request.id), uuid.uuid4().hex
    created = _write(
        lambda: store.create_tool_call(
            call_id, request.name, request.arguments, tenant=tenant, pending=token
        )
    )
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


#: A batch's runs as the store writes them: (ID, request, tools, chain).
_RunRow = tuple[str, RunRequest, list[str], list[Target]]


def submit_batch(
    app: Celery,
    store: RunStore,
    batch: AdmittedBatch,
    tenant: str,
    slot: AnswerSlot | None = None,
    every_tool: Sequence[str] | None = None,
) -> str:
    """Write every item's record, then the batch, pending; publish one dispatch task; accept.

    ``slot`` and ``every_tool`` are as for :func:`submit_run`. The items are written ready to
    run, but only the dispatch of an accepted batch starts them (the watchdog leaves the runs
    of a batch never accepted alone).
    """
    batch_id, token = str(uuid.uuid4()), uuid.uuid4().hex
    request = batch.request
    runs: list[_RunRow] = []
    items: list[str] = []
    tools: list[tuple[str, ToolCallItem]] = []
    for item in batch.items:
        if isinstance(item, ToolCallItem):
            call_id = str(uuid.uuid4())
            tools.append((call_id, item))
            items.append(keys.item(keys.TOOL_ITEM, call_id))
            continue
        run_id = str(uuid.uuid4())
        runs.append((run_id, item.prepared(run_id, tenant), item.tools(every_tool), item.chain))
        items.append(keys.item(keys.RUN_ITEM, run_id))
    key = batch_key(store, batch_id)
    items_key = keys.batch_items(store.settings.redis.key_prefix, batch_id)
    record: dict[str, str | int | float] = {
        "id": batch_id,
        "tenant": tenant,
        "status": BatchStatus.QUEUED.value,
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


def take_sent_run(
    store: RunStore, run_id: str, payload: Mapping[str, Any], app: Celery | None = None
) -> None:
    """Write the run a ``send_task("agentfleet.run")`` caller sent, accepted: its message is
    the one being delivered. If the payload is refused, a failed record, and :class:`RunFailed`.

    The payload is a :class:`~agentfleet.tasks.models.RunRequest`, plus an optional ``tenant``
    (a service with broker access is trusted to name its tenant; default ``default``).
    """
    fields = dict(payload)
    tenant = str(fields.pop("tenant", None) or DEFAULT_TENANT)
    problems = [] if TENANT_PATTERN.match(tenant) else [("tenant", f"invalid name {tenant!r}")]
    try:
        # Such callers were never refused a callback URL the server cannot sign for: the run
        # is kept and calls nobody back.
        run = admit_run(fields, store.settings, check_callback=False)
    except InvalidRequest as exc:
        _refuse_sent_run(store, run_id, InvalidRequest.of(problems + exc.problems))
    problems += transcript_problems(run.request, tenant, store.settings)
    if problems:
        _refuse_sent_run(store, run_id, InvalidRequest.of(problems))
    request = run.prepared(run_id, tenant)
    try:
        store.create_run(run_id, request, run.tools(), run.chain, tenant=tenant)
    except ThreadBusy as exc:
        _refuse_sent_run(store, run_id, InvalidRequest.of([("thread_id", exc.message)]))
    if app is not None:
        _interrupt(app, store, request, tenant, run_id)


def _refuse_sent_run(store: RunStore, run_id: str, refusal: InvalidRequest) -> NoReturn:
    """Record the sent run ``run_id`` as failed by ``refusal``, then raise :class:`RunFailed`."""
    placeholder = RunRequest(input="(invalid request)")
    store.create_run(run_id, placeholder, [], resolve_chain(store.settings, None))
    claim = store.begin_step(run_id, 1)
    finished = store.finish_step(
        run_id, 1, claim.token, status=RunStatus.FAILED, error=refusal.to_dict()
    )
    raise RunFailed.of(run_view(finished.record))


def _write(write: Callable[[], _T]) -> _T:
    """``write()``; a Redis error as :class:`Unavailable` (the pending record, if any,
    expires by itself: nothing to undo)."""
    try:
        return write()
    except redis.RedisError as exc:
        raise Unavailable(f"run store unavailable: {exc}") from None


def _publish(app: Celery, name: str, task_id: str | None = None, **options: Any) -> None:
    # Task events (and Flower) show summarized arguments: see workers/fixes/redact.py.
    try:
        app.send_task(name, task_id=task_id, **options)
    except (OperationalError, redis.RedisError, OSError) as exc:
        # The pending record expires by itself: nothing to undo.
        raise Unavailable(f"broker unavailable: {exc}") from None


def _accept(
    store: RunStore,
    record: tuple[str, str],
    token: str,
    slot: AnswerSlot | None,
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
    if outcome == "thread_busy":
        raise ThreadBusy("the run's thread has an unfinished run (thread_policy: reject)")
    if outcome == "sent":
        # Redis has it and applies it when it answers again; until then workers hold the
        # message. The work is accepted: answering 503 now would be the lie.
        log.warning("%s: acceptance sent, Redis did not answer in time", record[0])
    elif outcome != "accepted":
        raise Unavailable("the work expired before it could be accepted")
    if slot:
        slot.kept = True


def _drop_items(
    store: RunStore, runs: list[_RunRow], tools: list[tuple[str, ToolCallItem]]
) -> None:
    with contextlib.suppress(redis.RedisError):
        store.delete_records([r[0] for r in runs], [call_id for call_id, _ in tools])
