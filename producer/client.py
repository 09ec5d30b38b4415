"""A small synchronous client for the agentfleet HTTP API."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from agentfleet.producer import schemas

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class _HasStatus(Protocol):
    @property
    def status(self) -> str: ...


_Polled = TypeVar("_Polled", bound=_HasStatus)


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Events of a text/event-stream (``id``, ``event`` and ``data`` fields)."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                yield Event(
                    fields.get("id", ""), fields.get("event", "message"), json.loads(fields["data"])
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def _poll(get: Callable[[], _Polled], what: str, timeout: float, interval: float) -> _Polled:
    deadline = time.monotonic() + timeout
    while True:
        item = get()
        if item.status in TERMINAL:
            return item
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} still {item.status} after {timeout}s")
        time.sleep(interval)


class ApiError(Exception):
    """The API answered with an error status. ``args == (status, detail)``."""

    def __init__(self, status: int, detail: object) -> None:
        super().__init__(status, detail)

    @property
    def status(self) -> int:
        return int(self.args[0])

    def __str__(self) -> str:
        return f"HTTP {self.args[0]}: {_describe_detail(self.args[1])}"


def _describe_detail(detail: object) -> str:
    """An error body's ``detail`` in words: a validation error's list becomes
    ``field: message; ...`` (the ``body`` of its location left out)."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and all(isinstance(d, dict) and "msg" in d for d in detail):
        problems = []
        for item in detail:
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
            problems.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
        return "; ".join(problems)
    return json.dumps(detail)


@dataclass(frozen=True)
class Event:
    """One event of a run: ``id`` (resume after it), ``type`` and its ``data``."""

    id: str
    type: str
    data: dict[str, Any]


class Client:
    """``Client().create_run("...")`` then ``.wait(run_id)``.

    ``base_url`` defaults to ``AGENTFLEET_API_URL``, else ``http://127.0.0.1:8000``;
    ``api_key`` to ``AGENTFLEET_API_KEY``.
    """

    def __init__(
        self, base_url: str | None = None, timeout: float = 10.0, api_key: str | None = None
    ) -> None:
        url = base_url or os.environ.get("AGENTFLEET_API_URL") or DEFAULT_URL
        key = api_key or os.environ.get("AGENTFLEET_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=url, timeout=timeout, headers=headers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(
        self, method: str, path: str, idempotency_key: str | None = None, **kwargs: Any
    ) -> Any:
        if idempotency_key is not None:
            kwargs["headers"] = {"Idempotency-Key": idempotency_key}
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json()

    def create_run(
        self,
        input: str,
        *,
        system: str | None = None,
        model: str | None = None,
        providers: list[str] | None = None,
        tools: list[str] | None = None,
        max_steps: int | None = None,
        metadata: dict[str, str] | None = None,
        stream: bool = False,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> schemas.Accepted:
        """Enqueue a run; returns its ID and links at once."""
        body: dict[str, Any] = {"input": input}
        for key, value in (
            ("system", system),
            ("model", model),
            ("providers", providers),
            ("tools", tools),
            ("max_steps", max_steps),
            ("metadata", metadata),
            ("callback_url", callback_url),
        ):
            if value is not None:
                body[key] = value
        if stream:
            body["stream"] = True
        answer = self._call("POST", "/v1/runs", idempotency_key, json=body)
        return schemas.Accepted.model_validate(answer)

    def cancel(self, run_id: str) -> schemas.Run:
        return schemas.Run.model_validate(self._call("POST", f"/v1/runs/{run_id}/cancel"))

    def events(
        self, run_id: str, after: str | None = None, reconnect: bool = True
    ) -> Iterator[Event]:
        """The run's events until its final one, resuming after ``after``; a dropped
        connection is picked up again after the last event seen (``reconnect``)."""
        last = after
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/runs/{run_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(10, read=60),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise ApiError(response.status_code, response.json().get("detail"))
                    for event in _parse_sse(response.iter_lines()):
                        last = event.id
                        yield event
                        if event.type in TERMINAL:
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                if not reconnect:
                    raise
                time.sleep(0.5)
                continue
            if not reconnect:
                return

    def create_batch(
        self,
        items: list[dict[str, Any]],
        *,
        callback_url: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> schemas.Accepted:
        """Enqueue runs (``{"input": ...}``), prompts (``{"type": "prompt", ...}``) and tool
        calls (``{"type": "tool_call", "name": ..., "arguments": ...}``) as one batch."""
        body: dict[str, Any] = {"items": items}
        if callback_url is not None:
            body["callback_url"] = callback_url
        if metadata is not None:
            body["metadata"] = metadata
        answer = self._call("POST", "/v1/batches", idempotency_key, json=body)
        return schemas.Accepted.model_validate(answer)

    def create_batch_from_jsonl(self, path: str | Path, **options: Any) -> schemas.Accepted:
        """A batch from a JSONL file: one item per line (blank lines skipped)."""
        items = []
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
        return self.create_batch(items, **options)

    def get_batch(self, batch_id: str, offset: int = 0, limit: int = 100) -> schemas.Batch:
        params = {"offset": offset, "limit": limit}
        return schemas.Batch.model_validate(
            self._call("GET", f"/v1/batches/{batch_id}", params=params)
        )

    def wait_batch(
        self, batch_id: str, timeout: float = 600.0, interval: float = 0.5
    ) -> schemas.Batch:
        """Poll until every item is final; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            batch = self.get_batch(batch_id, limit=0)
            if batch.status in ("completed", "cancelled") and batch.result is not None:
                return batch
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"batch {batch_id}: {batch.completed}/{batch.total} after {timeout}s"
                )
            time.sleep(interval)

    def cancel_batch(self, batch_id: str) -> schemas.Batch:
        return schemas.Batch.model_validate(self._call("POST", f"/v1/batches/{batch_id}/cancel"))

    def get_run(self, run_id: str) -> schemas.Run:
        return schemas.Run.model_validate(self._call("GET", f"/v1/runs/{run_id}"))

    def wait(self, run_id: str, timeout: float = 120.0, interval: float = 0.2) -> schemas.Run:
        """Poll until the run is succeeded, failed or cancelled; TimeoutError after ``timeout``."""
        return _poll(lambda: self.get_run(run_id), f"run {run_id}", timeout, interval)

    def create_tool_call(
        self, name: str, arguments: dict[str, Any], call_id: str | None = None
    ) -> schemas.Accepted:
        body: dict[str, Any] = {"name": name, "arguments": arguments}
        if call_id is not None:
            body["id"] = call_id
        return schemas.Accepted.model_validate(self._call("POST", "/v1/tool-calls", json=body))

    def get_tool_call(self, call_id: str) -> schemas.ToolCall:
        return schemas.ToolCall.model_validate(self._call("GET", f"/v1/tool-calls/{call_id}"))

    def wait_tool_call(
        self, call_id: str, timeout: float = 60.0, interval: float = 0.2
    ) -> schemas.ToolCall:
        """Poll until the tool call is succeeded or failed; TimeoutError after ``timeout``."""
        return _poll(lambda: self.get_tool_call(call_id), f"tool call {call_id}", timeout, interval)

    def tools(self) -> list[schemas.ToolInfo]:
        return schemas.ToolList.model_validate(self._call("GET", "/v1/tools")).tools

    def providers(self) -> list[schemas.ProviderState]:
        return schemas.ProviderList.model_validate(self._call("GET", "/v1/providers")).providers

    def health(self) -> schemas.Health:
        return schemas.Health.model_validate(self._call("GET", "/healthz"))
