"""The producer HTTP API: ``uvicorn agentfleet.producer.api:app``. OpenAPI at ``/openapi.json``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import redis
from celery import Celery, states
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from agentfleet.producer import fleet, schemas, ui
from agentfleet.producer.auth import TenantDep, require_tenant
from agentfleet.producer.batches import cancel_items
from agentfleet.producer.bodylimit import BodyLimit
from agentfleet.producer.events import EVENT_ID, sse_stream
from agentfleet.producer.idempotency import Slot, fingerprint, run_once
from agentfleet.producer.logcontext import RunIdContext
from agentfleet.producer.metrics import router as metrics_router
from agentfleet.tasks import children, intake, runlist, spend, steps, threads, tracing, waits
from agentfleet.tasks.batch import batch_record, batch_view
from agentfleet.tasks.errors import (
    BudgetExceeded,
    InProgress,
    InvalidRequest,
    NotWaiting,
    RunNotFound,
    ThreadBusy,
    Unauthorized,
    Unavailable,
)
from agentfleet.tasks.lifecycle import follow_up
from agentfleet.tasks.llm import get_guard
from agentfleet.tasks.models import (
    DEFAULT_TENANT,
    THREAD_ID_PATTERN,
    ApprovalsRequest,
    BatchRequest,
    InputRequest,
    RunRequest,
    ToolCallRequest,
)
from agentfleet.tasks.records import BatchRecord, RunRecord, ToolCallRecord
from agentfleet.tasks.redaction import Redactor
from agentfleet.tasks.redisconn import warn_if_not_durable
from agentfleet.tasks.settings import Settings, get_settings, warn_unknown_variables
from agentfleet.tasks.states import RunStatus, ToolCallStatus
from agentfleet.tasks.store import RunStore, get_store
from agentfleet.tasks.views import run_view, tool_call_view, usage_view
from agentfleet.workers import signals
from agentfleet.workers.conf import api_config
from agentfleet.workers.logs import configure_api_logging

#: Paths whose requests make no span: probes and scrapes, every few seconds, would bury the runs.
UNTRACED_PATHS = frozenset({"/healthz", "/metrics"})


class NotFound(Exception):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"no {kind} with id {ident!r}")


class BadRequest(Exception):
    """A 400 whose message says what is wrong."""


def _problem(status: int, problems: list[tuple[str, str]]) -> JSONResponse:
    # Same shape as FastAPI's own 422s, so clients parse one format.
    detail = [{"loc": ["body", f], "msg": m, "type": "value_error"} for f, m in problems]
    return JSONResponse({"detail": detail}, status_code=status)


def store_dep(request: Request) -> RunStore:
    """The run store of the settings this API was built with."""
    settings: Settings = request.app.state.settings
    return get_store(settings)


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_producer(request: Request) -> Celery:
    app: Celery = request.app.state.celery
    return app


def get_fleet(request: Request) -> fleet.FleetCache:
    cache: fleet.FleetCache = request.app.state.fleet
    return cache


StoreDep = Annotated[RunStore, Depends(store_dep)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ProducerDep = Annotated[Celery, Depends(get_producer)]
FleetDep = Annotated[fleet.FleetCache, Depends(get_fleet)]

router = APIRouter(dependencies=[Depends(require_tenant)])
public = APIRouter()

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Send the same key again (within 24 h by default) to get the same answer "
        "instead of creating the work twice.",
    ),
]
ACCEPT_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"description": "Invalid request"},
    429: {"description": "The tenant's daily budget is spent"},
    503: {"description": "Unavailable"},
}


def _accepted(collection: str, ident: str, status: str = "queued") -> JSONResponse:
    return JSONResponse(intake.accepted_body(collection, ident, status), status_code=202)


def _within_budget(store: RunStore, settings: Settings, tenant: str) -> None:
    """Refuse new work (429, :class:`BudgetExceeded`) of a tenant whose daily budget is spent:
    raised, not answered, so an Idempotency-Key does not keep the refusal."""
    refusal = spend.tenant_refusal(store.redis, settings, tenant)
    if refusal is not None:
        raise refusal


def _own_run(store: RunStore, tenant: str, run_id: str) -> RunRecord:
    """The run's record if it belongs to ``tenant``; another tenant's run does not exist."""
    record = store.get_run(run_id)
    if record is None or record.tenant != tenant:
        raise NotFound("run", run_id)
    return record


@router.post("/v1/runs", status_code=202, response_model=schemas.Accepted, responses=ACCEPT_ERRORS)
def create_run(
    request: Request,
    body: RunRequest,
    store: StoreDep,
    settings: SettingsDep,
    producer: ProducerDep,
    tenant: TenantDep,
    workers: FleetDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Enqueue an agent run. Answers at once; poll ``GET /v1/runs/{id}``."""

    def produce(slot: Slot | None) -> JSONResponse:
        try:
            run = intake.admit_run(body, settings, check_callback=True)
        except InvalidRequest as exc:
            return _problem(422, exc.problems)
        if problems := intake.transcript_problems(run.request, tenant, settings):
            return _problem(422, problems)
        view = workers.view()
        if problems := fleet.run_problems(view, run.request):
            return _problem(422, problems)
        _within_budget(store, settings, tenant)
        run_id = intake.submit_run(producer, store, run, tenant, slot, fleet.every_tool(view))
        return _accepted("runs", run_id)

    return _once(request, store, tenant, idempotency_key, body, produce)


@router.get("/v1/runs", response_model=schemas.RunPage, responses={422: {}})
def list_runs(
    store: StoreDep,
    tenant: TenantDep,
    status: Annotated[RunStatus | None, Query(description="Only runs in this status.")] = None,
    agent: Annotated[str | None, Query(max_length=64)] = None,
    thread_id: Annotated[str | None, Query(pattern=THREAD_ID_PATTERN)] = None,
    error_code: Annotated[str | None, Query(max_length=64)] = None,
    metadata: Annotated[
        list[str] | None,
        Query(description="key=value pairs the run's metadata has (repeat for several)."),
    ] = None,
    created_after: Annotated[datetime | None, Query(description="ISO 8601, inclusive.")] = None,
    created_before: Annotated[datetime | None, Query(description="ISO 8601, exclusive.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> Any:
    """The caller's runs, newest first, filtered; ``next_cursor`` continues the list (a page
    may hold fewer than ``limit`` runs and still have a next one). Runs are listed for as long
    as their records are kept (``AGENTFLEET_RUN_TTL``)."""
    pairs = []
    for pair in metadata or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            return _problem(422, [("metadata", f"{pair!r} is not key=value")])
        pairs.append((key, value))
    query = runlist.RunQuery(
        status=status,
        agent=agent,
        thread_id=thread_id,
        error_code=error_code,
        metadata=pairs,
        created_after=created_after.timestamp() if created_after else None,
        created_before=created_before.timestamp() if created_before else None,
    )
    try:
        after = runlist.Cursor.decode(cursor) if cursor else None
    except InvalidRequest as exc:
        return _problem(422, exc.problems)
    page = runlist.list_runs(
        store.redis, store.settings.redis.key_prefix, tenant, query, limit, after
    )
    return {
        "runs": [run_view(run) for run in page.runs],
        "next_cursor": page.cursor.encode() if page.cursor else None,
    }


@router.get("/v1/runs/{run_id}/steps", response_model=schemas.RunSteps, responses={404: {}})
def get_run_steps(run_id: str, store: StoreDep, settings: SettingsDep, tenant: TenantDep) -> Any:
    """The run step by step: each step's input and answer, its tool calls with arguments and
    results, provider, model, worker, tokens, cost, cache hits, timing and deliveries; secrets
    redacted (``AGENTFLEET_REDACT_FIELDS``, ``AGENTFLEET_REDACT_PATTERNS``)."""
    run = _own_run(store, tenant, run_id)
    redactor = Redactor(settings.api.redact_fields, settings.api.redact_patterns)
    return steps.run_steps(store, run, redactor)


@router.get("/v1/runs/{run_id}", response_model=schemas.Run, responses={404: {}})
def get_run(run_id: str, store: StoreDep, tenant: TenantDep) -> Any:
    """Status, progress, usage and result of a run; for a run that called sub-agents, its
    ``children`` (their IDs) and ``tree_usage``: its own usage and every descendant's."""
    run = _own_run(store, tenant, run_id)
    view = run_view(run)
    if below := children.descendants(store, run.id):
        view["children"] = children.children_of(store, run.id)
        view["tree_usage"] = usage_view(children.tree_usage(run, below))
    return view


@router.post(
    "/v1/runs/{run_id}/cancel",
    response_model=schemas.Run,
    responses={404: {}, 409: {"description": "The run is already final"}},
)
def cancel_run(
    request: Request,
    run_id: str,
    store: StoreDep,
    producer: ProducerDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Cancel a run: queued steps do nothing, the model's answer in progress is dropped, tool
    calls not yet started never start. A final run cannot be cancelled (409)."""

    def produce(_: Slot | None) -> JSONResponse:
        _own_run(store, tenant, run_id)
        outcome, finished = store.cancel_run(run_id, "cancelled by request")
        if outcome != "cancelled":
            status = outcome.removeprefix("final:")
            return JSONResponse({"detail": f"run {run_id} is already {status}"}, status_code=409)
        if finished is not None:
            follow_up(producer, store, run_id, finished)
        # Its sub-agent runs (and theirs) go with it.
        children.cancel_descendants(producer, store, run_id, "its parent run was cancelled")
        return JSONResponse(run_view(_own_run(store, tenant, run_id)))

    return _once(request, store, tenant, idempotency_key, {"run": run_id}, produce)


WAIT_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {},
    409: {"description": "The run is not waiting, or the call is not pending (or decided)"},
    422: {"description": "Invalid decisions"},
}


@router.post("/v1/runs/{run_id}/approvals", response_model=schemas.Run, responses=WAIT_ERRORS)
def decide_approvals(
    run_id: str, body: ApprovalsRequest, store: StoreDep, producer: ProducerDep, tenant: TenantDep
) -> Any:
    """Approve or deny tool calls the run waits to have approved (``waiting.pending``). An
    approved call runs, with ``arguments`` instead if given; a denied one gives the model
    "denied by the reviewer" and the ``message``. Once every pending call is decided, the run
    goes on. All or nothing: a decision that is refused (409, 422) records none of them."""
    try:
        return run_view(waits.approve(producer, store, run_id, body, tenant))
    except InvalidRequest as exc:
        return _problem(422, exc.problems)


@router.post("/v1/runs/{run_id}/input", response_model=schemas.Run, responses=WAIT_ERRORS)
def answer_input(
    run_id: str, body: InputRequest, store: StoreDep, producer: ProducerDep, tenant: TenantDep
) -> Any:
    """Answer a question the run asked a person (the ``ask_human`` tool): the answer is the
    tool's result the model sees."""
    try:
        return run_view(waits.answer(producer, store, run_id, body, tenant))
    except InvalidRequest as exc:
        return _problem(422, exc.problems)


@router.get(
    "/v1/runs/{run_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 404: {}},
)
async def run_events(
    run_id: str,
    request: Request,
    store: StoreDep,
    tenant: TenantDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[str | None, Query(description="Resume after this event ID.")] = None,
) -> StreamingResponse:
    """The run's events as Server-Sent Events, from the start or after ``Last-Event-ID``;
    the stream ends after the run's final event."""
    _own_run(store, tenant, run_id)
    start = last_event_id or after or "0-0"
    if not EVENT_ID.match(start):
        raise BadRequest(f"not an event ID: {start!r}")
    return StreamingResponse(
        sse_stream(request, store.settings, run_id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/v1/tool-calls", status_code=202, response_model=schemas.Accepted, responses=ACCEPT_ERRORS
)
def create_tool_call(
    request: Request,
    body: ToolCallRequest,
    store: StoreDep,
    producer: ProducerDep,
    tenant: TenantDep,
    workers: FleetDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Enqueue one tool call. An ``id`` that was used before returns that call."""

    def produce(slot: Slot | None) -> JSONResponse:
        try:
            call = intake.admit_tool_call(body)
        except InvalidRequest as exc:
            return _problem(422, exc.problems)
        if problems := fleet.tool_call_problems(workers.view(), body.name):
            return _problem(422, problems)
        call_id, created = intake.submit_tool_call(producer, store, call, tenant, slot)
        public = body.id or call_id
        if created:
            return _accepted("tool-calls", public)
        # Created before: as it is now.
        record = store.get_tool_call(call_id)
        status = record.status if record else ToolCallStatus.QUEUED
        return _accepted("tool-calls", public, status.value)

    return _once(request, store, tenant, idempotency_key, body, produce)


@router.get("/v1/tool-calls/{call_id}", response_model=schemas.ToolCall, responses={404: {}})
def get_tool_call(call_id: str, store: StoreDep, producer: ProducerDep, tenant: TenantDep) -> Any:
    """Status and structured result of a tool call."""
    stored_id, call = _own_tool_call(store, tenant, call_id)
    view = tool_call_view(call, call_id)
    if view["result"] is None:
        # Killed at its hard time limit, the task never stored a result of its own;
        # Celery recorded the failure, so report it instead of "running" forever.
        celery_result = producer.AsyncResult(stored_id)
        if celery_result.state == states.FAILURE:
            error = {"code": "tool_call_lost", "message": f"did not return: {celery_result.result}"}
            failed = {"id": call_id, "ok": False, "error": error}
            view |= {"status": ToolCallStatus.FAILED.value, "result": failed}
    return view


def _own_tool_call(store: RunStore, tenant: str, call_id: str) -> tuple[str, ToolCallRecord]:
    """(stored ID, record) of a tool call of ``tenant``: its own ID, or one we generated, or
    one made inside one of its runs."""
    for stored_id in (intake.tool_call_key(tenant, call_id), call_id):
        call = store.get_tool_call(stored_id)
        if call is None:
            continue
        owner = call.tenant
        if not owner and call.run_id:
            run = store.get_run(call.run_id)
            owner = run.tenant if run else DEFAULT_TENANT
        if (owner or DEFAULT_TENANT) == tenant:
            return stored_id, call
    raise NotFound("tool call", call_id)


@router.post(
    "/v1/batches", status_code=202, response_model=schemas.Accepted, responses=ACCEPT_ERRORS
)
def create_batch(
    request: Request,
    body: BatchRequest,
    store: StoreDep,
    settings: SettingsDep,
    producer: ProducerDep,
    tenant: TenantDep,
    workers: FleetDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Enqueue up to ``AGENTFLEET_MAX_BATCH_ITEMS`` runs, prompts or tool calls as one chord.
    Each item is pollable by its own ID (listed by ``GET /v1/batches/{id}``)."""

    def produce(slot: Slot | None) -> JSONResponse:
        try:
            batch = intake.admit_batch(body, settings)
        except InvalidRequest as exc:
            return _problem(422, exc.problems)
        if problems := intake.batch_transcript_problems(batch, tenant, settings):
            return _problem(422, problems)
        view = workers.view()
        if problems := fleet.batch_problems(view, body):
            return _problem(422, problems)
        _within_budget(store, settings, tenant)
        batch_id = intake.submit_batch(producer, store, batch, tenant, slot, fleet.every_tool(view))
        return _accepted("batches", batch_id)

    return _once(request, store, tenant, idempotency_key, body, produce)


def _own_batch(store: RunStore, tenant: str, batch_id: str) -> BatchRecord:
    batch = batch_record(store, batch_id)
    if batch is None or batch.tenant != tenant:
        raise NotFound("batch", batch_id)
    return batch


@router.get("/v1/batches/{batch_id}", response_model=schemas.Batch, responses={404: {}})
def get_batch(
    batch_id: str,
    store: StoreDep,
    tenant: TenantDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=0, le=1000)] = 100,
) -> Any:
    """``completed`` of ``total``, counts, one page of items (``offset``, ``limit``) with
    their status and result or error, and the aggregate once every item is final."""
    return batch_view(store, _own_batch(store, tenant, batch_id), offset, limit)


@router.post(
    "/v1/batches/{batch_id}/cancel",
    response_model=schemas.Batch,
    responses={404: {}, 409: {"description": "The batch is already final"}},
)
def cancel_batch(
    request: Request,
    batch_id: str,
    store: StoreDep,
    producer: ProducerDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Cancel every item that is not final; a batch not yet dispatched never publishes."""

    def produce(_: Slot | None) -> JSONResponse:
        batch = _own_batch(store, tenant, batch_id)
        if batch.terminal:
            return JSONResponse(
                {"detail": f"batch {batch_id} is already {batch.status.value}"}, status_code=409
            )
        cancel_items(producer, store, batch_id)
        return JSONResponse(batch_view(store, _own_batch(store, tenant, batch_id), 0, 0))

    return _once(request, store, tenant, idempotency_key, {"batch": batch_id}, produce)


def _once(
    request: Request,
    store: RunStore,
    tenant: str,
    key: str | None,
    body: Any,
    produce: Callable[[Slot | None], JSONResponse],
) -> JSONResponse:
    digest = fingerprint(request.method, request.url.path, body)
    return run_once(store, tenant, key, digest, produce)


@router.get("/v1/tools", response_model=schemas.ToolList)
def list_tools(workers: FleetDep) -> Any:
    """Every tool the API or a live worker has, with its JSON schema, the workers that have it,
    and where they disagree (a worker of a queue lacking it, differing schemas); the live
    workers and their tools."""
    return fleet.listing(workers)


#: A thread ID as a run names it: anything else names no thread (and no other key).
ThreadId = Annotated[str, Path(pattern=THREAD_ID_PATTERN)]
#: Redis list offsets are 64-bit; no thread is near this long.
MAX_OFFSET = 10_000_000


@router.get("/v1/threads/{thread_id}", response_model=schemas.Thread, responses={404: {}})
def get_thread(
    thread_id: ThreadId,
    store: StoreDep,
    tenant: TenantDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """A thread of the caller's tenant: a page of its history (``offset``, ``limit``), the run
    running on it and those waiting, and its latest runs with their status."""
    view = threads.thread_view(store, tenant, thread_id, offset, limit)
    if view is None:
        raise NotFound("thread", thread_id)
    return view


@router.delete("/v1/threads/{thread_id}", status_code=204, responses={404: {}, 409: {}})
def delete_thread(thread_id: ThreadId, store: StoreDep, tenant: TenantDep) -> Response:
    """Delete a thread's history. A thread with unfinished runs is kept (409): cancel them or
    let them end first."""
    existed, unfinished = threads.delete(store, tenant, thread_id)
    if unfinished:
        detail = f"thread {thread_id} has unfinished runs: {', '.join(unfinished)}"
        return JSONResponse({"detail": detail}, status_code=409)
    if not existed:
        raise NotFound("thread", thread_id)
    return Response(status_code=204)


@router.get("/v1/agents", response_model=schemas.AgentList)
def list_agents(workers: FleetDep) -> Any:
    """Every declared agent the API or a live worker has: its instructions, model, tools,
    input and output schemas, model settings and what a run may override; the workers that
    have it, and where they disagree."""
    return fleet.agent_listing(workers)


@router.get("/v1/usage", response_model=schemas.UsageReport, responses={422: {}})
def get_usage(
    store: StoreDep,
    settings: SettingsDep,
    tenant: TenantDep,
    day: Annotated[
        str | None,
        Query(
            pattern=r"^\d{4}-\d{2}-\d{2}$",
            description="A UTC day, YYYY-MM-DD (default: today); kept for 8 days.",
        ),
    ] = None,
) -> Any:
    """The tenant's LLM spend on a day: tokens, cost and calls, per model; what calls in flight
    hold against its budget; its daily budget and when it resets."""
    return spend.usage_report(store.redis, settings, tenant, day)


@router.get("/v1/providers", response_model=schemas.ProviderList)
def list_providers(settings: SettingsDep) -> Any:
    """Breaker state, failures, time to half-open and limiter fill of every provider."""
    return {"providers": [get_guard(settings, p).snapshot() for p in settings.llm.provider_list]}


@public.get("/healthz", response_model=schemas.Health, responses={503: {}})
def healthz(response: Response, store: StoreDep) -> Any:
    """Liveness and Redis reachability."""
    try:
        store.redis.ping()
    except redis.RedisError as exc:
        response.status_code = 503
        return {"ok": False, "redis": f"unreachable: {exc}"}
    return {"ok": True, "redis": "ok"}


def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


def _unauthorized(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
    )


def _bad_request(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"service unavailable: {exc}"}, status_code=503, headers={"Retry-After": "1"}
    )


def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


def _over_budget(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BudgetExceeded)
    wait = max(int((exc.resets_at or time.time()) - time.time()) + 1, 1)
    return JSONResponse(
        {"detail": exc.message}, status_code=429, headers={"Retry-After": str(wait)}
    )


def _in_progress(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409, headers={"Retry-After": "1"})


@asynccontextmanager
async def _lifespan(api: FastAPI) -> AsyncIterator[None]:
    # Once per API process, off the event loop: CONFIG GET waits on Redis.
    await asyncio.to_thread(warn_if_not_durable, api.state.settings)
    yield


def create_api(settings: Settings | None = None, celery_app: Celery | None = None) -> FastAPI:
    """The API bound to ``settings`` (default: the environment) and a Celery app."""
    settings = settings or get_settings()
    if celery_app is None:
        from agentfleet.workers import app as default_app

        celery_app = default_app
    # Its publishes answer within api_redis_timeout, or the caller gets a 503.
    celery_app.conf.update(api_config(settings))
    if tracing.configure("agentfleet-api"):
        signals.trace_tasks()  # what a request publishes carries its span's context
    api = FastAPI(
        title="agentfleet",
        version="0.1.0",
        description="Enqueue LLM agent runs and tool calls; poll them by ID.",
        lifespan=_lifespan,
        # FastAPI makes each request's server span once a tracer provider is set (only when
        # tracing is on): that span is the parent of what the request publishes, so no
        # operation spans between them; and the exporters are ours (agentfleet.tasks.tracing),
        # whatever FASTAPI_OTEL_AUTO_CONFIGURE says.
        telemetry={
            "operation_spans": False,
            "auto_configure": False,
            "exclude": lambda scope: scope.get("path") in UNTRACED_PATHS,
        },
    )
    api.state.settings = settings
    api.state.celery = celery_app
    api.state.fleet = fleet.FleetCache(settings)
    api.add_middleware(BodyLimit)
    api.add_middleware(RunIdContext)
    api.add_exception_handler(NotFound, _not_found)
    api.add_exception_handler(Unavailable, _unavailable)
    api.add_exception_handler(InProgress, _in_progress)
    api.add_exception_handler(ThreadBusy, _conflict)
    api.add_exception_handler(NotWaiting, _conflict)
    api.add_exception_handler(RunNotFound, _not_found)
    api.add_exception_handler(BudgetExceeded, _over_budget)
    api.add_exception_handler(redis.RedisError, _unavailable)
    api.add_exception_handler(Unauthorized, _unauthorized)
    api.add_exception_handler(BadRequest, _bad_request)
    api.include_router(router)
    api.include_router(public)
    api.include_router(metrics_router)
    ui.install(api)
    return api


# uvicorn has set up its loggers by the time it imports this module: make them structured
# too when AGENTFLEET_LOG_FORMAT=json.
configure_api_logging(get_settings())
# uvicorn's own start-up logger, so the warning reads like the lines around it.
warn_unknown_variables(logging.getLogger("uvicorn.error"), get_settings())
app = create_api()
