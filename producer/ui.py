"""The run explorer: server-rendered pages under ``/ui``, served by the API.

Sign in with an API key (:mod:`agentfleet.producer.uisession`); every page then shows only that
key's tenant: its runs (the filters of ``GET /v1/runs``, newest first, a page at a time, the
first page refreshed every few seconds), a run (status, usage and cost, error, result, its
steps drawn to scale and its transcript, following the run's events while it runs), the
providers (breakers, rate limiters, recent breaker changes) and its spend of a day. Pages are
HTML from Jinja2 templates (``ui_templates/``) with a little plain JavaScript
(``ui_static/``); the data comes from the functions the API's routes call, not over HTTP.
Nothing here is in the OpenAPI schema. ``AGENTFLEET_UI_SECRET`` unset turns it off (503).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from agentfleet.producer.events import EVENT_ID, sse_stream
from agentfleet.producer.since import parse_since
from agentfleet.producer.uisession import COOKIE, Session, session_of, sign_in
from agentfleet.producer.uiviews import breaker_changes, duration, timeline, usage_by_agent
from agentfleet.tasks import children, runlist, spend, steps
from agentfleet.tasks.errors import InvalidRequest
from agentfleet.tasks.llm import get_guard
from agentfleet.tasks.models import THREAD_ID_PATTERN
from agentfleet.tasks.records import RunRecord
from agentfleet.tasks.redaction import Redactor
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.states import RunStatus
from agentfleet.tasks.store import RunStore, get_store
from agentfleet.tasks.views import run_view

HERE = Path(__file__).resolve().parent
#: Runs on a page of the run list.
PAGE_SIZE = 50
#: Seconds between refreshes of the run list's first page.
LIST_REFRESH_SECONDS = 3
#: What the explorer's pages may load: their own scripts, styles and images, nothing inline.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Pages hold a tenant's data: never kept by a shared cache or the browser's history.
    "Cache-Control": "no-store",
}
_THREAD_ID = re.compile(THREAD_ID_PATTERN)
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _when(value: str | float | None) -> str:
    """An ISO time or Unix time as ``2026-12-05 06:05:16 UTC``."""
    if value is None or value == "":
        return "-"
    if isinstance(value, int | float):
        moment = datetime.fromtimestamp(value, UTC)
    else:
        moment = datetime.fromisoformat(value).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}"


templates = Jinja2Templates(directory=HERE / "ui_templates")
templates.env.filters.update(duration=duration, when=_when, money=_money)


class _SignInFirst(Exception):
    """No live session: a page redirects to the sign-in form, a fragment answers 401."""

    def __init__(self, page: bool) -> None:
        super().__init__("sign in first")
        self.page = page


class _Off(Exception):
    """The explorer has no signing key (``AGENTFLEET_UI_SECRET``)."""


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    if settings.api.ui_secret is None:
        raise _Off
    return settings


def _store(request: Request) -> RunStore:
    return get_store(_settings(request))


def _session(request: Request, page: bool) -> Session:
    settings = _settings(request)
    found = session_of(get_store(settings).redis, settings, request.cookies.get(COOKIE))
    if found is None:
        raise _SignInFirst(page)
    return found


def _page_session(request: Request) -> Session:
    return _session(request, page=True)


def _part_session(request: Request) -> Session:
    return _session(request, page=False)


PageSession = Annotated[Session, Depends(_page_session)]
PartSession = Annotated[Session, Depends(_part_session)]
StoreDep = Annotated[RunStore, Depends(_store)]

router = APIRouter(prefix="/ui", include_in_schema=False)


def _base(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}/ui"


def _render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    session: Session | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    values = {"ui": _base(request), "tenant": session.tenant if session else None, **context}
    response = templates.TemplateResponse(request, template, values, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def _redirect(request: Request, path: str) -> RedirectResponse:
    response = RedirectResponse(f"{_base(request)}{path}", status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


def _same_origin(request: Request) -> bool:
    """A form post from a page of this host, or from no page at all (no ``Origin``)."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def _own_run(store: RunStore, session: Session, run_id: str) -> RunRecord | None:
    record = store.get_run(run_id)
    return record if record is not None and record.tenant == session.tenant else None


# --- sign-in -----------------------------------------------------------------------------
@router.get("")
@router.get("/")
def home(request: Request, session: PageSession) -> Response:
    return _redirect(request, "/runs")


@router.get("/login")
def login_form(request: Request) -> Response:
    settings = _settings(request)
    if session_of(get_store(settings).redis, settings, request.cookies.get(COOKIE)):
        return _redirect(request, "/runs")
    return _render(request, "login.html", {"error": None})


@router.post("/login")
async def login(request: Request) -> Response:
    settings = _settings(request)
    if not _same_origin(request):
        return _render(request, "login.html", {"error": "sign in from this site"}, None, 403)
    form = parse_qs((await request.body()).decode(errors="replace"))
    key = (form.get("api_key") or [""])[0].strip()
    cookie = sign_in(get_store(settings).redis, settings, key) if key else None
    if cookie is None:
        error = "That API key is not known here." if key else "Enter an API key."
        return _render(request, "login.html", {"error": error}, None, 401)
    response = _redirect(request, "/runs")
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=settings.api.ui_session_ttl,
        path=_base(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    response = _redirect(request, "/login")
    if _same_origin(request):
        response.delete_cookie(COOKIE, path=_base(request), httponly=True, samesite="strict")
    return response


# --- runs --------------------------------------------------------------------------------
def _filters(params: Mapping[str, list[str]]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The run list's filters from the query: (form values, problems naming the field)."""

    def one(name: str) -> str:
        return (params.get(name) or [""])[0].strip()

    values: dict[str, Any] = {
        name: one(name) for name in ("status", "agent", "thread_id", "error_code", "since")
    }
    values["metadata"] = [p.strip() for p in params.get("metadata", []) if p.strip()]
    values["cursor"] = one("cursor")
    problems = []
    if values["status"] and values["status"] not in set(RunStatus):
        problems.append(("status", f"{values['status']!r} is not a run status"))
    if values["thread_id"] and not _THREAD_ID.match(values["thread_id"]):
        problems.append(("thread_id", "letters, digits, '.', '_' and '-', at most 128"))
    for name in ("agent", "error_code"):
        if len(values[name]) > 64:
            problems.append((name, "at most 64 characters"))
    problems += [
        ("metadata", f"{pair!r} is not key=value")
        for pair in values["metadata"]
        if not pair.partition("=")[0] or "=" not in pair
    ]
    if values["since"]:
        try:
            parse_since(values["since"])
        except ValueError as exc:
            problems.append(("since", str(exc)))
    return values, problems


def _query(values: Mapping[str, Any]) -> runlist.RunQuery:
    since = None
    if values["since"]:
        moment = parse_since(values["since"])
        since = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return runlist.RunQuery(
        status=RunStatus(values["status"]) if values["status"] else None,
        agent=values["agent"] or None,
        thread_id=values["thread_id"] or None,
        error_code=values["error_code"] or None,
        metadata=[(k, v) for k, _, v in (p.partition("=") for p in values["metadata"])],
        created_after=since,
    )


def _search(values: Mapping[str, Any], **changes: str | None) -> str:
    """The query string of ``values`` with ``changes`` (None drops a field)."""
    pairs: list[tuple[str, str]] = []
    merged = {**values, **changes}
    for name in ("status", "agent", "thread_id", "error_code", "since", "cursor"):
        if merged.get(name):
            pairs.append((name, str(merged[name])))
    pairs += [("metadata", pair) for pair in merged.get("metadata") or []]
    return urlencode(pairs)


def _listing(request: Request, store: RunStore, session: Session) -> tuple[dict[str, Any], int]:
    """The run list page's context, and its status code."""
    values, problems = _filters(parse_qs(request.url.query))
    context: dict[str, Any] = {
        "filters": values,
        "statuses": [s.value for s in RunStatus],
        "problems": problems,
        "runs": [],
        "next_url": None,
        "first_url": None,
        "rows_url": None,
        "refresh": LIST_REFRESH_SECONDS,
    }
    if problems:
        return context, 400
    try:
        after = runlist.Cursor.decode(values["cursor"]) if values["cursor"] else None
    except InvalidRequest as exc:
        context["problems"] = exc.problems
        return context, 400
    page = runlist.list_runs(
        store.redis,
        store.settings.redis.key_prefix,
        session.tenant,
        _query(values),
        PAGE_SIZE,
        after,
    )
    now = time.time()
    context["runs"] = [_row(run_view(run), now) for run in page.runs]
    base = f"{_base(request)}/runs"
    if page.cursor is not None:
        context["next_url"] = f"{base}?{_search(values, cursor=page.cursor.encode())}"
    if after is not None:
        context["first_url"] = f"{base}?{_search(values, cursor=None)}"
    else:  # only the first page follows new runs: later pages must not shift under the reader
        context["rows_url"] = f"{base}/rows?{_search(values)}"
    return context, 200


def _row(view: dict[str, Any], now: float) -> dict[str, Any]:
    started, finished = view.get("started_at"), view.get("finished_at")
    took = None
    if started:
        end = datetime.fromisoformat(finished).timestamp() if finished else now
        took = (end - datetime.fromisoformat(started).timestamp()) * 1000
    return {**view, "duration_ms": took}


@router.get("/runs")
def runs_page(request: Request, store: StoreDep, session: PageSession) -> Response:
    context, status = _listing(request, store, session)
    return _render(request, "runs.html", context | {"nav": "runs"}, session, status)


@router.get("/runs/rows")
def runs_rows(request: Request, store: StoreDep, session: PartSession) -> Response:
    """The run list's results alone, for the page's refresh."""
    context, status = _listing(request, store, session)
    return _render(request, "_runs_results.html", context, session, status)


def _run_context(request: Request, store: RunStore, record: RunRecord) -> dict[str, Any]:
    settings = store.settings
    redactor = Redactor(settings.api.redact_fields, settings.api.redact_patterns)
    view = run_view(record)
    # The explorer shows what the steps view shows: the answer and the error redacted too.
    for name in ("result", "result_text", "error"):
        view[name] = redactor.value(view[name])
    shown = steps.run_steps(store, record, redactor)
    found = shown["steps"]
    base = f"{_base(request)}/runs/{record.id}"
    return {
        "run": view,
        # Sub-agent calls: each a run of its own, linked from here.
        "children": children.children_of(store, record.id),
        "steps": found,
        "transcript_kept": shown["transcript"] == "kept",
        "timeline": timeline(view, found, time.time() * 1000),
        "live_url": f"{base}/live",
        "events_url": None if record.terminal else f"{base}/events",
    }


def _missing(request: Request, session: Session, run_id: str) -> HTMLResponse:
    context = {"title": "Run not found", "message": f"There is no run {run_id!r} here."}
    return _render(request, "error.html", context, session, 404)


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: str, store: StoreDep, session: PageSession) -> Response:
    record = _own_run(store, session, run_id)
    if record is None:
        return _missing(request, session, run_id)
    context = _run_context(request, store, record) | {"nav": "runs"}
    return _render(request, "run.html", context, session)


@router.get("/runs/{run_id}/live")
def run_live(request: Request, run_id: str, store: StoreDep, session: PartSession) -> Response:
    """The run page's changing part, re-read as the run's events arrive."""
    record = _own_run(store, session, run_id)
    if record is None:
        return _missing(request, session, run_id)
    return _render(request, "_run_live.html", _run_context(request, store, record), session)


@router.get("/runs/{run_id}/events")
async def run_events(
    request: Request,
    run_id: str,
    store: StoreDep,
    session: PartSession,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """``GET /v1/runs/{id}/events`` for the signed-in page (an EventSource sends cookies, not
    an Authorization header)."""
    if _own_run(store, session, run_id) is None:
        return Response("no such run", status_code=404, media_type="text/plain")
    start = last_event_id or "0-0"
    if not EVENT_ID.match(start):
        return Response(f"not an event ID: {start!r}", status_code=400, media_type="text/plain")
    headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
    stream = sse_stream(request, store.settings, run_id, start)
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


# --- providers and usage -----------------------------------------------------------------
@router.get("/providers")
def providers_page(request: Request, store: StoreDep, session: PageSession) -> Response:
    settings = store.settings
    context = {
        "nav": "providers",
        "providers": [get_guard(settings, p).snapshot() for p in settings.llm.provider_list],
        "changes": breaker_changes(store.redis, settings.redis.key_prefix),
    }
    return _render(request, "providers.html", context, session)


@router.get("/usage")
def usage_page(request: Request, store: StoreDep, session: PageSession) -> Response:
    settings = store.settings
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=n)).isoformat() for n in range(spend.KEEP_DAYS)]
    day = request.query_params.get("day") or days[0]
    if not _DAY.match(day) or day not in days:
        message = f"Pick one of the last {len(days)} days."
        problem = {"title": "No such day", "message": message, "nav": "usage"}
        return _render(request, "error.html", problem, session, 400)
    report = spend.usage_report(store.redis, settings, session.tenant, day)
    agents, complete = usage_by_agent(store.redis, settings.redis.key_prefix, session.tenant, day)
    context: dict[str, Any] = {"nav": "usage", "report": report, "agents": agents}
    context |= {"complete": complete, "days": days, "day": day}
    return _render(request, "usage.html", context, session)


# --- wiring ------------------------------------------------------------------------------
def _sign_in_first(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _SignInFirst)
    if exc.page:
        return _redirect(request, "/login")
    return Response("sign in first", status_code=401, media_type="text/plain")


def _off(request: Request, _: Exception) -> Response:
    context = {
        "title": "The run explorer is off",
        "message": "Set AGENTFLEET_UI_SECRET on the API (32 characters or more) to turn it on.",
    }
    return _render(request, "error.html", context, None, 503)


def install(api: FastAPI) -> None:
    """Serve the explorer from ``api``: its pages, scripts and styles, under ``/ui``."""
    api.include_router(router)
    api.mount("/ui/static", StaticFiles(directory=HERE / "ui_static"), name="ui-static")
    api.add_exception_handler(_SignInFirst, _sign_in_first)
    api.add_exception_handler(_Off, _off)
