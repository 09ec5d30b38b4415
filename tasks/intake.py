"""Taking work in: check a request once, write it, publish it, accept it.

Both ways in go through here. The API (:mod:`agentfleet.producer.api`) checks a request with
:func:`admit_run`, :func:`admit_tool_call` or :func:`admit_batch`, which answer with the
request typed and its provider chains resolved, or raise
:class:`~agentfleet.tasks.errors.InvalidRequest`; then :func:`submit_run`,
:func:`submit_tool_call` or :func:`submit_batch` write it, publish it and accept it. A
``send_task("agentfleet.run")`` caller's message is published already: its task hands the
payload to :func:`take_sent_run`, which checks it the same way and writes it accepted.

A submit makes three writes: the records, pending; the message; and the acceptance, one
script that also keeps the Idempotency-Key's answer. No worker starts pending work: it holds
the message until the work is accepted, or drops it once the records expire
(``AGENTFLEET_PENDING_TTL``). Redis may apply any of these writes late (paused, it buffers what
it is sent), so a submit raises :class:`~agentfleet.tasks.errors.Unavailable` (a 503) only when
the acceptance was never sent, and returns once it was, even without a reply: Redis applies
it when it answers again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar, cast

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from agentfleet.tasks import names
from agentfleet.tasks.batch import batch_key
from agentfleet.tasks.context import REQUEST_RUN_ID
from agentfleet.tasks.errors import (
    Answered,
    InProgress,
    InvalidRequest,
    RunFailed,
    ToolArgumentsError,
    Unavailable,
)
from agentfleet.tasks.llm import RoutingError, Target, resolve_chain
from agentfleet.tasks.models import (
    DEFAULT_TENANT,
    TENANT_PATTERN,
    BatchRequest,
    PromptItem,
    RunRequest,
    RunStatus,
    ToolCallItem,
    ToolCallRequest,
)
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.store import RunStore
from agentfleet.tasks.toolcall import time_limits, tool_payload
from agentfleet.tasks.tools import registry
from agentfleet.tasks.views import run_view

log = logging.getLogger(__name__)

#: ``(field, message)`` for each thing wrong with a request.
Problems = list[tuple[str, str]]

_T = TypeVar("_T")

#: Problems a batch's refusal names at most: enough to fix; a 10,000-item report helps nobody.
MAX_BATCH_PROBLEMS = 20


# --- checking ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdmittedRun:
    """A run request that passed every check, with the provider chain it resolved to."""

    request: RunRequest
    chain: list[Target]

    def tools(self, every_tool: Sequence[str] | None = None) -> list[str]:
        """The run's tools: those it names, else ``every_tool`` (default: every registered one)."""
        if self.request.tools is None and every_tool is not None:
            return list(every_tool)
        return resolve_tools(self.request)


@dataclass(frozen=True)
class AdmittedBatch:
    """A batch that passed every check: its items in order, runs admitted, tool calls as sent."""

    request: BatchRequest
    items: list[AdmittedRun | ToolCallItem]


def resolve_tools(request: RunRequest) -> list[str]:
    """The tool names a run may use: those asked for, or every registered tool."""
    return registry.names() if request.tools is None else list(dict.fromkeys(request.tools))


def admit_run(
    raw: RunRequest | Mapping[str, Any], settings: Settings, *, check_callback: bool
) -> AdmittedRun:
    """``raw`` (a request, or its JSON) checked against the schema and ``settings``' limits,
    with its provider chain resolved; :class:`InvalidRequest` naming every problem otherwise.

    ``check_callback``: refuse a ``callback_url`` when the server has no callback secret.
    """
    request = _parse(raw)
    chain, problems = _run_checks(request, settings)
    if check_callback:
        problems += callback_problems(request.callback_url, settings)
    if chain is None or problems:
        raise InvalidRequest.of(problems)
    return AdmittedRun(request, chain)


def admit_tool_call(request: ToolCallRequest) -> ToolCallRequest:
    """``request`` if its tool exists and its arguments fit the tool's schema; else
    :class:`InvalidRequest`."""
    if problems := _tool_call_checks(request.name, request.arguments):
        raise InvalidRequest.of(problems)
    return request


def admit_batch(request: BatchRequest, settings: Settings) -> AdmittedBatch:
    """``request`` with every item checked (runs admitted as by :func:`admit_run`); else
    :class:`InvalidRequest` naming the first :data:`MAX_BATCH_PROBLEMS` or so problems."""
    problems: Problems = []
    items: list[AdmittedRun | ToolCallItem] = []
    if len(request.items) > settings.max_batch_items:
        limit = settings.max_batch_items
        problems.append(("items", f"{len(request.items)} items; the limit is {limit}"))
    else:
        problems += _batch_item_checks(request, settings, items)
    problems += callback_problems(request.callback_url, settings)
    if problems:
        raise InvalidRequest.of(problems)
    return AdmittedBatch(request, items)


def _batch_item_checks(
    request: BatchRequest, settings: Settings, admitted: list[AdmittedRun | ToolCallItem]
) -> Problems:
    """The problems of each item, up to about :data:`MAX_BATCH_PROBLEMS`, while appending the
    items to ``admitted`` (all of them when there is none)."""
    problems: Problems = []
    for index, item in enumerate(request.items):
        if isinstance(item, ToolCallItem):
            found = _tool_call_checks(item.name, item.arguments)
            admitted.append(item)
        else:
            run = item.as_run() if isinstance(item, PromptItem) else item
            chain, found = _run_checks(run, settings)
            if chain is not None:
                admitted.append(AdmittedRun(run, chain))
        problems += [(f"items.{index}.{f}", m) for f, m in found]
        if len(problems) >= MAX_BATCH_PROBLEMS:
            break
    return problems


def callback_problems(url: object, settings: Settings) -> Problems:
    """A ``callback_url`` is refused while the server has no secret to sign callbacks with."""
    if url is not None and settings.callback_secret is None:
        return [("callback_url", "callbacks are off: the server has no AGENTFLEET_CALLBACK_SECRET")]
    return []


def _parse(raw: RunRequest | Mapping[str, Any]) -> RunRequest:
    if isinstance(raw, RunRequest):
        return raw  # parsed by the API already: once is enough
    try:
        return RunRequest.model_validate(raw)
    except ValidationError as exc:
        problems = [(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]
        raise InvalidRequest.of(problems) from None


def _run_checks(request: RunRequest, settings: Settings) -> tuple[list[Target] | None, Problems]:
    """The provider chain of ``request`` (None if it does not resolve) and every limit it breaks."""
    problems: Problems = []
    prompt_chars = len(request.input) + len(request.system or "")
    if prompt_chars > settings.max_input_chars:
        problems.append(
            (
                "input",
                f"input and system prompt are {prompt_chars} characters; "
                f"the limit is {settings.max_input_chars}",
            )
        )
    if request.max_steps is not None and request.max_steps > settings.max_steps_limit:
        problems.append(
            (
                "max_steps",
                f"max_steps is {request.max_steps}; the limit is {settings.max_steps_limit}",
            )
        )
    if request.tools is not None:
        problems += _tools_checks(request.tools, settings)
    chain = None
    try:
        chain = resolve_chain(settings, request.model, request.providers)
    except RoutingError as exc:
        problems.append(("providers" if request.providers else "model", str(exc)))
    metadata_bytes = len(json.dumps(request.metadata).encode())
    if metadata_bytes > settings.max_metadata_bytes:
        problems.append(
            (
                "metadata",
                f"metadata is {metadata_bytes} bytes as JSON; the limit is "
                f"{settings.max_metadata_bytes}",
            )
        )
    return chain, problems


def _tools_checks(tools: list[str], settings: Settings) -> Problems:
    problems: Problems = []
    if len(tools) > settings.max_tools_per_run:
        problems.append(
            ("tools", f"{len(tools)} tools requested; the limit is {settings.max_tools_per_run}")
        )
    unknown = sorted({t for t in tools if t not in registry})
    if unknown:
        problems.append(("tools", f"unknown tools: {', '.join(unknown)}"))
    return problems


def _tool_call_checks(name: str, arguments: dict[str, Any]) -> Problems:
    if name not in registry:
        return [("name", f"no tool named {name!r}")]
    try:
        registry.get(name).validate(arguments)
    except ToolArgumentsError as exc:
        return [("arguments", str(exc))]
    return []


# --- writing, publishing, accepting ---------------------------------------------------------
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
    _write(
        lambda: store.create_run(
            run_id, run.request, run.tools(every_tool), run.chain, tenant=tenant, pending=token
        )
    )
    _publish(app, names.RUN, run_id, kwargs={"request": None})
    key = store.run_key(run_id)
    answer = accepted_body("runs", run_id)
    _accept(store, (key, f"{key}:messages"), token, slot, answer, run_id=run_id)
    log.info("run %s enqueued", run_id)
    return run_id


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
            items.append(f"tool:{call_id}")
            continue
        run_id = str(uuid.uuid4())
        runs.append((run_id, item.request, item.tools(every_tool), item.chain))
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
            pipe.rpush(f"{key}:items", *items[start : start + 1000])
        pipe.pexpire(key, store.pending_ms())
        pipe.pexpire(f"{key}:items", store.pending_ms())
        pipe.execute()
        _publish(app, names.BATCH_DISPATCH, args=(batch_id,), argsrepr=f"({batch_id!r})")
        _accept(store, (key, f"{key}:items"), token, slot, accepted_body("batches", batch_id))
    except (redis.RedisError, Unavailable, Answered) as exc:
        # Never started, and harmless if left: tidy up without holding the answer.
        threading.Thread(target=_drop_items, args=(store, runs, tools), daemon=True).start()
        if isinstance(exc, redis.RedisError):
            raise Unavailable(f"run store unavailable: {exc}") from None
        raise
    return batch_id


def take_sent_run(store: RunStore, run_id: str, payload: Mapping[str, Any]) -> None:
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
    if problems:
        _refuse_sent_run(store, run_id, InvalidRequest.of(problems))
    store.create_run(run_id, run.request, run.tools(), run.chain, tenant=tenant)


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
    # Task events (and Flower) show summarized arguments: see workers/redact.py.
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
