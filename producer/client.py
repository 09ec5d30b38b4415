"""A small synchronous client for the agentfleet HTTP API."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import httpx

from producer import schemas

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class _HasStatus(Protocol):
    @property
    def status(self) -> str: ...


_Polled = TypeVar("_Polled", bound=_HasStatus)


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
        return f"HTTP {self.args[0]}: {self.args[1]}"


class Client:
    """``Client().create_run("...")`` then ``.wait(run_id)``.

    ``base_url`` defaults to ``AGENTFLEET_API_URL``, else ``http://127.0.0.1:8000``.
    """

    def __init__(self, base_url: str | None = None, timeout: float = 10.0) -> None:
        url = base_url or os.environ.get("AGENTFLEET_API_URL") or DEFAULT_URL
        self._http = httpx.Client(base_url=url, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
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
        ):
            if value is not None:
                body[key] = value
        return schemas.Accepted.model_validate(self._call("POST", "/v1/runs", json=body))

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
