"""The producer HTTP API: ``uvicorn producer.api:app``. OpenAPI at ``/openapi.json``."""

from __future__ import annotations

from typing import Annotated, Any

import redis
from celery import Celery, states
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from producer import schemas
from producer.enqueue import Unavailable, submit_run, submit_tool_call
from producer.metrics import router as metrics_router
from tasks.llm import get_guard
from tasks.models import RunRequest, ToolCallRequest, limit_problems, tool_call_problems
from tasks.store import RunStore, get_store
from tasks.tools import registry
from tasks.views import run_view, tool_call_view
from workers.settings import Settings, get_settings

#: Largest request body accepted; bigger ones get 413 before they are read.
MAX_BODY_BYTES = 1_000_000


class NotFound(Exception):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"no {kind} with id {ident!r}")


def _problem(status: int, problems: list[tuple[str, str]]) -> JSONResponse:
    # Same shape as FastAPI's own 422s, so clients parse one format.
    detail = [{"loc": ["body", f], "msg": m, "type": "value_error"} for f, m in problems]
    return JSONResponse({"detail": detail}, status_code=status)


class BodyLimit:
    """413 for bodies over ``MAX_BODY_BYTES`` (by Content-Length, or while streaming)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
                response = JSONResponse(
                    {"detail": f"request body is larger than {MAX_BODY_BYTES} bytes"},
                    status_code=413,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


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


StoreDep = Annotated[RunStore, Depends(store_dep)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ProducerDep = Annotated[Celery, Depends(get_producer)]

router = APIRouter()


@router.post(
    "/v1/runs",
    status_code=202,
    response_model=schemas.Accepted,
    responses={422: {"description": "Invalid request"}, 503: {"description": "Unavailable"}},
)
def create_run(
    body: RunRequest, store: StoreDep, settings: SettingsDep, producer: ProducerDep
) -> Any:
    """Enqueue an agent run. Answers at once; poll ``GET /v1/runs/{id}``."""
    problems = limit_problems(body, settings)
    if problems:
        return _problem(422, problems)
    run_id = submit_run(producer, store, body)
    return {"id": run_id, "status": "queued", "links": {"self": f"/v1/runs/{run_id}"}}


@router.get("/v1/runs/{run_id}", response_model=schemas.Run, responses={404: {}})
def get_run(run_id: str, store: StoreDep) -> Any:
    """Status, progress, usage and result of a run."""
    record = store.get_run(run_id)
    if record is None:
        raise NotFound("run", run_id)
    return run_view(record)


@router.post("/v1/tool-calls", status_code=202, response_model=schemas.Accepted)
def create_tool_call(body: ToolCallRequest, store: StoreDep, producer: ProducerDep) -> Any:
    """Enqueue one tool call. An ``id`` that was used before returns that call."""
    problems = tool_call_problems(body)
    if problems:
        return _problem(422, problems)
    call_id, _ = submit_tool_call(producer, store, body)
    record = store.get_tool_call(call_id) or {}
    return {
        "id": call_id,
        "status": record.get("status", "queued"),
        "links": {"self": f"/v1/tool-calls/{call_id}"},
    }


@router.get("/v1/tool-calls/{call_id}", response_model=schemas.ToolCall, responses={404: {}})
def get_tool_call(call_id: str, store: StoreDep, producer: ProducerDep) -> Any:
    """Status and structured result of a tool call."""
    record = store.get_tool_call(call_id)
    if record is None:
        raise NotFound("tool call", call_id)
    view = tool_call_view(record)
    if view["result"] is None:
        # Killed at its hard time limit, the task never stored a result of its own;
        # Celery recorded the failure, so report it instead of "running" forever.
        celery_result = producer.AsyncResult(call_id)
        if celery_result.state == states.FAILURE:
            error = {"code": "tool_call_lost", "message": f"did not return: {celery_result.result}"}
            view |= {"status": "failed", "result": {"id": call_id, "ok": False, "error": error}}
    return view


@router.get("/v1/tools", response_model=schemas.ToolList)
def list_tools() -> Any:
    """Every registered tool with its JSON schema."""
    return {
        "tools": [
            {"name": t.name, "description": t.description, "parameters": t.parameters}
            for t in registry.all()
        ]
    }


@router.get("/v1/providers", response_model=schemas.ProviderList)
def list_providers(settings: SettingsDep) -> Any:
    """Breaker state, failures, time to half-open and limiter fill of every provider."""
    return {"providers": [get_guard(settings, p).snapshot() for p in settings.provider_list]}


@router.get("/healthz", response_model=schemas.Health, responses={503: {}})
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


def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"service unavailable: {exc}"}, status_code=503, headers={"Retry-After": "1"}
    )


def create_api(settings: Settings | None = None, celery_app: Celery | None = None) -> FastAPI:
    """The API bound to ``settings`` (default: the environment) and a Celery app."""
    settings = settings or get_settings()
    if celery_app is None:
        from workers import app as default_app

        celery_app = default_app
    api = FastAPI(
        title="agentfleet",
        version="0.1.0",
        description="Enqueue LLM agent runs and tool calls; poll them by ID.",
    )
    api.state.settings = settings
    api.state.celery = celery_app
    api.add_middleware(BodyLimit)
    api.add_exception_handler(NotFound, _not_found)
    api.add_exception_handler(Unavailable, _unavailable)
    api.add_exception_handler(redis.RedisError, _unavailable)
    api.include_router(router)
    api.include_router(metrics_router)
    return api


app = create_api()
