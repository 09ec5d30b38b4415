"""What :class:`Client` and :class:`AsyncClient` share: each endpoint as data, and the
reading of its answer.

An endpoint is a function that returns a :class:`Call`: the HTTP request to make and how to
turn the answer into a model. The two clients only send calls, wait and stream, each in its
own way of doing I/O, so every endpoint, rule and parser is written once, here.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Required, TypedDict, TypeVar

import httpx
import pydantic

from agentfleet.client import _models as models
from agentfleet.client._errors import (
    ApiError,
    ProtocolError,
    RunError,
    Unreachable,
    WaitTimeout,
    api_error,
)
from agentfleet.client._models import M

T = TypeVar("T")
#: An answer with a status (a run, a tool call).
R = TypeVar("R", models.Run, models.ToolCall)
#: The HTTP client a client class is built on.
H = TypeVar("H", httpx.Client, httpx.AsyncClient)

DEFAULT_URL = "http://127.0.0.1:8000"
#: Each request: connect, write, read and pool, 10 s each.
DEFAULT_TIMEOUT = httpx.Timeout(10.0)
#: An event stream: 10 s to connect, and up to 60 s between two reads. The API sends a
#: keep-alive comment every 15 s while a run is quiet, so 60 s of silence is a dead connection.
EVENTS_TIMEOUT = httpx.Timeout(10.0, read=60.0)
#: Seconds before an event stream whose connection broke is opened again.
RECONNECT_DELAY = 0.5


def connection(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The API's URL and the headers of every request: ``base_url``, else
    ``AGENTFLEET_API_URL``, else :data:`DEFAULT_URL`; ``api_key``, else
    ``AGENTFLEET_API_KEY``, else no key."""
    url = base_url or os.environ.get("AGENTFLEET_API_URL") or DEFAULT_URL
    key = api_key or os.environ.get("AGENTFLEET_API_KEY")
    return url, ({"Authorization": f"Bearer {key}"} if key else {})


class RunOptions(TypedDict, total=False):
    """A run's options besides its input; None (or left out) means the API's default.
    The same ``idempotency_key`` again (within the API's window, 24 h by default) answers
    as the first time instead of creating the work twice."""

    idempotency_key: str | None
    agent: str | None
    system: str | None
    model: str | None
    providers: list[str] | None
    tools: list[str] | None
    max_steps: int | None
    model_settings: dict[str, Any] | None
    output_schema: dict[str, Any] | None
    thread_id: str | None
    thread_policy: str | None
    thread_history: str | None
    context_budget: int | None
    cache_ttl: float | None
    context_summary: bool | None
    max_total_tokens: int | None
    max_cost: float | None
    budget_policy: str | None
    approval_required: list[str] | None
    wait_timeout: float | None
    on_wait_timeout: str | None
    wait_default: str | None
    metadata: dict[str, str] | None
    stream: bool
    callback_url: str | None


class BatchOptions(TypedDict, total=False):
    """A batch's options besides its items (``idempotency_key`` as for a run)."""

    idempotency_key: str | None
    callback_url: str | None
    metadata: dict[str, str] | None


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request, and ``parse``, which makes the result of its answer's JSON body.

    ``answers`` are the error statuses that still carry a body of the expected shape (the
    health check's 503); any other status of 400 or more raises the :class:`ApiError` of
    its status.
    """

    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    answers: frozenset[int] = frozenset()

    def request(self) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client.request`` (and the async one's)."""
        return {
            "method": self.method,
            "url": self.path,
            "json": self.json,
            "params": self.params,
            "headers": self.headers,
        }

    def answer(self, response: httpx.Response) -> T:
        """The result of ``response`` (read), or the error it stands for."""
        if response.status_code >= 400 and response.status_code not in self.answers:
            raise error_of(response, response.content)
        try:
            # 204 No Content (a deletion) has no body to read.
            return self.parse(None if response.status_code == 204 else response.json())
        except (ValueError, pydantic.ValidationError) as exc:  # JSONDecodeError is a ValueError
            raise ProtocolError(
                f"{self.method} {self.path}: HTTP {response.status_code}, unexpected body: {exc}"
            ) from exc


def error_of(response: httpx.Response, body: bytes) -> ApiError:
    """The :class:`ApiError` of an error answer with ``body``."""
    text = body.decode(response.encoding or "utf-8", errors="replace")
    return api_error(response.status_code, text, response.headers.get("Retry-After"))


@contextlib.contextmanager
def transport_errors() -> Iterator[None]:
    """Raise httpx's transport errors (connect, read, timeouts, ...) as :class:`Unreachable`:
    the one place where the client translates them."""
    try:
        yield
    except httpx.TransportError as exc:
        raise Unreachable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc


def _idempotent(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key is not None else {}


def _without_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _split(options: RunOptions | BatchOptions) -> tuple[dict[str, Any], dict[str, str]]:
    """The body fields of ``options`` that are set, and the headers of its idempotency key."""
    fields = {k: v for k, v in options.items() if v is not None and k != "idempotency_key"}
    return fields, _idempotent(options.get("idempotency_key"))


def create_run(
    input: str | dict[str, Any],
    options: RunOptions,
    output_type: type[pydantic.BaseModel] | None = None,
) -> Call[models.Accepted]:
    fields, headers = _split(options)
    if not fields.get("stream"):
        fields.pop("stream", None)  # the API's default: no token events
    if output_type is not None and "output_schema" not in fields and not fields.get("agent"):
        # An agent has its own output type; an ad-hoc run states the caller's.
        fields["output_schema"] = output_type.model_json_schema()
    body = {"input": input, **fields}
    return Call("POST", "/v1/runs", models.Accepted.model_validate, body, headers=headers)


def outcome(run: models.Run, output_type: type[M] | None) -> models.Run | M:
    """What :meth:`Client.run` answers: the run, or its result as ``output_type``;
    :class:`RunError` if the run did not succeed."""
    if run.status != "succeeded":
        raise RunError(run)
    return run if output_type is None else run.output(output_type)


def get_thread(thread_id: str, offset: int, limit: int) -> Call[models.Thread]:
    params = {"offset": offset, "limit": limit}
    return Call("GET", f"/v1/threads/{thread_id}", models.Thread.model_validate, params=params)


def delete_thread(thread_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/threads/{thread_id}", lambda _: None)


class RunFilters(TypedDict, total=False):
    """What ``list_runs`` filters on (``GET /v1/runs``); each left out matches every run.
    ``metadata``: pairs the run's metadata must have; ``created_after``/``created_before``:
    ISO 8601 times (or datetimes)."""

    status: str
    agent: str
    thread_id: str
    error_code: str
    metadata: dict[str, str]
    created_after: str | datetime
    created_before: str | datetime


def list_runs(filters: RunFilters, limit: int, cursor: str | None) -> Call[models.RunPage]:
    params: dict[str, Any] = {"limit": limit}
    for name, value in filters.items():
        if isinstance(value, dict):
            params["metadata"] = [f"{k}={v}" for k, v in value.items()]
        elif isinstance(value, datetime):
            params[name] = value.isoformat()
        elif value is not None:
            params[name] = value
    if cursor:
        params["cursor"] = cursor
    return Call("GET", "/v1/runs", models.RunPage.model_validate, params=params)


def run_steps(run_id: str) -> Call[models.RunSteps]:
    return Call("GET", f"/v1/runs/{run_id}/steps", models.RunSteps.model_validate)


def get_run(run_id: str) -> Call[models.Run]:
    return Call("GET", f"/v1/runs/{run_id}", models.Run.model_validate)


def cancel_run(run_id: str, idempotency_key: str | None) -> Call[models.Run]:
    path = f"/v1/runs/{run_id}/cancel"
    return Call("POST", path, models.Run.model_validate, headers=_idempotent(idempotency_key))


def create_tool_call(
    name: str, arguments: dict[str, Any], call_id: str | None
) -> Call[models.Accepted]:
    # The call's ID is its idempotency key: the same ID again answers with that call.
    body = _without_none({"name": name, "arguments": arguments, "id": call_id})
    return Call("POST", "/v1/tool-calls", models.Accepted.model_validate, body)


def get_tool_call(call_id: str) -> Call[models.ToolCall]:
    return Call("GET", f"/v1/tool-calls/{call_id}", models.ToolCall.model_validate)


def create_batch(items: list[dict[str, Any]], options: BatchOptions) -> Call[models.Accepted]:
    fields, headers = _split(options)
    body = {"items": items, **fields}
    return Call("POST", "/v1/batches", models.Accepted.model_validate, body, headers=headers)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The items of a JSONL file: one JSON object a line, blank lines skipped; ValueError
    names the line that is not JSON."""
    items = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
    return items


def get_batch(batch_id: str, offset: int, limit: int) -> Call[models.Batch]:
    params = {"offset": offset, "limit": limit}
    return Call("GET", f"/v1/batches/{batch_id}", models.Batch.model_validate, params=params)


def cancel_batch(batch_id: str, idempotency_key: str | None) -> Call[models.Batch]:
    path = f"/v1/batches/{batch_id}/cancel"
    return Call("POST", path, models.Batch.model_validate, headers=_idempotent(idempotency_key))


def _tool_list(body: Any) -> list[models.ToolInfo]:
    return models.ToolList.model_validate(body).tools


def _agent_list(body: Any) -> list[models.AgentInfo]:
    return models.AgentList.model_validate(body).agents


def _provider_list(body: Any) -> list[models.ProviderState]:
    return models.ProviderList.model_validate(body).providers


TOOLS: Call[list[models.ToolInfo]] = Call("GET", "/v1/tools", _tool_list)
AGENTS: Call[list[models.AgentInfo]] = Call("GET", "/v1/agents", _agent_list)


def usage(day: str | None) -> Call[models.UsageReport]:
    params = {"day": day} if day else {}
    return Call("GET", "/v1/usage", models.UsageReport.model_validate, params=params)


PROVIDERS: Call[list[models.ProviderState]] = Call("GET", "/v1/providers", _provider_list)
#: A 503 is an answer too: ``ok`` false, and ``redis`` says why.
HEALTH: Call[models.Health] = Call(
    "GET", "/healthz", models.Health.model_validate, answers=frozenset({503})
)


class Wait(Generic[T]):
    """Polling ``call`` until ``done`` says its result is final, for at most ``timeout``
    seconds, ``interval`` seconds apart."""

    def __init__(
        self,
        call: Call[T],
        done: Callable[[T], bool],
        progress: Callable[[T], str],
        timeout: float,
        interval: float,
    ) -> None:
        self.call = call
        self.interval = interval
        self._done = done
        self._progress = progress
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout

    def finished(self, result: T) -> bool:
        """Whether ``result`` is final; :class:`WaitTimeout` once the time is up."""
        if self._done(result):
            return True
        if time.monotonic() > self._deadline:
            raise WaitTimeout(f"{self._progress(result)} after {self._timeout}s")
        return False


def _wait_final(
    call: Call[R], final: frozenset[str], what: str, timeout: float, interval: float
) -> Wait[R]:
    return Wait(
        call, lambda r: r.status in final, lambda r: f"{what} still {r.status}", timeout, interval
    )


def wait_run(
    run_id: str, timeout: float, interval: float, until_waiting: bool = False
) -> Wait[models.Run]:
    until = models.RUN_FINAL | {"waiting"} if until_waiting else models.RUN_FINAL
    return _wait_final(get_run(run_id), until, f"run {run_id}", timeout, interval)


class Decision(TypedDict, total=False):
    """A reviewer's decision on a pending call (``POST /v1/runs/{id}/approvals``):
    ``approve``, and optionally the ``arguments`` to run an approved call with and a
    ``message`` shown to the model."""

    call_id: Required[str]
    approve: Required[bool]
    arguments: dict[str, Any]
    message: str


def decide_run(run_id: str, decisions: list[Decision]) -> Call[models.Run]:
    body = {"decisions": [_without_none(dict(d)) for d in decisions]}
    return Call("POST", f"/v1/runs/{run_id}/approvals", models.Run.model_validate, body)


def answer_run(run_id: str, answer: str, call_id: str | None) -> Call[models.Run]:
    body = _without_none({"answer": answer, "call_id": call_id})
    return Call("POST", f"/v1/runs/{run_id}/input", models.Run.model_validate, body)


def wait_tool_call(call_id: str, timeout: float, interval: float) -> Wait[models.ToolCall]:
    call, final = get_tool_call(call_id), models.TOOL_CALL_FINAL
    return _wait_final(call, final, f"tool call {call_id}", timeout, interval)


def wait_batch(batch_id: str, timeout: float, interval: float) -> Wait[models.Batch]:
    # A batch is final once its result is written, which follows its last item.
    return Wait(
        get_batch(batch_id, 0, 0),
        lambda batch: batch.status in ("completed", "cancelled") and batch.result is not None,
        lambda batch: f"batch {batch_id}: {batch.completed}/{batch.total}",
        timeout,
        interval,
    )


class EventStream:
    """A run's events over Server-Sent Events, across connections.

    While :meth:`opens` says so, :meth:`connect` gives the request of the next connection
    (resuming after the last event seen, with ``Last-Event-ID``), :meth:`feed` takes the lines
    of its body and returns each complete event, and :meth:`broken` says how long to wait
    after the connection broke. ``finished`` once the run's final event was seen.
    Without ``reconnect``, one connection only, and a broken one raises.

    A connection that ends without breaking and without an event is the last one: the API
    ends a stream only once the run is final, so a stream resumed after the run's final
    event ends at once, and opening it again would get nothing, forever.
    """

    def __init__(
        self, run_id: str, after: str | None, reconnect: bool, timeout: float | httpx.Timeout
    ) -> None:
        self.path = f"/v1/runs/{run_id}/events"
        self.last = after
        self.finished = False
        self._reconnect = reconnect
        self._connections = 0
        self._quiet = False  # the last connection ended without an event and without breaking
        self._timeout = timeout
        self._fields: dict[str, str] = {}

    def opens(self) -> bool:
        """Whether to open a (further) connection."""
        if self._connections == 0:
            return True
        return not self.finished and self._reconnect and not self._quiet

    def connect(self) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client.stream`` (and the async one's)."""
        self._connections += 1
        self._quiet = True
        self._fields = {}  # an event cut off by a broken connection is sent again
        headers = {"Last-Event-ID": self.last} if self.last else {}
        return {"method": "GET", "url": self.path, "headers": headers, "timeout": self._timeout}

    def broken(self, error: Unreachable) -> float:
        """Seconds to wait before connecting again; ``error`` itself without ``reconnect``."""
        if not self._reconnect:
            raise error
        self._quiet = False
        return RECONNECT_DELAY

    def feed(self, line: str) -> models.Event | None:
        """The event that ``line`` completes, if any (``id``, ``event`` and ``data`` fields;
        comments, the keep-alives, are skipped)."""
        if line:
            if not line.startswith(":"):
                name, _, value = line.partition(":")
                self._fields[name] = value.removeprefix(" ")
            return None
        fields, self._fields = self._fields, {}
        if "data" not in fields:
            return None
        try:
            event = models.Event(
                id=fields.get("id", ""),
                type=fields.get("event", "message"),
                data=json.loads(fields["data"]),
            )
        except (ValueError, pydantic.ValidationError) as exc:
            raise ProtocolError(f"{self.path}: not an event: {fields}: {exc}") from exc
        self.last = event.id or self.last
        self.finished = event.final
        self._quiet = False
        return event


class BaseClient(Generic[H]):
    """What a client is made of: an ``H`` (``httpx.Client`` or ``httpx.AsyncClient``) that
    sends each request to the API with its key, and the timeout of event streams.

    ``base_url`` defaults to ``AGENTFLEET_API_URL``, else ``http://127.0.0.1:8000``;
    ``api_key`` to ``AGENTFLEET_API_KEY``. ``timeout`` bounds each request,
    ``events_timeout`` an event stream's connect and its silence between two events.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        events_timeout: float | httpx.Timeout = EVENTS_TIMEOUT,
    ) -> None:
        url, headers = connection(base_url, api_key)
        self._http: H = self._connect(url, headers, timeout)
        self._events_timeout = events_timeout

    def _connect(self, url: str, headers: dict[str, str], timeout: float | httpx.Timeout) -> H:
        raise NotImplementedError

    def _events(self, run_id: str, after: str | None, reconnect: bool) -> EventStream:
        return EventStream(run_id, after, reconnect, self._events_timeout)
