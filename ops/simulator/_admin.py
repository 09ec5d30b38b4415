"""Admin routes: per-provider faults and usage under ``/_sim/providers``, recorded requests.

Resilience tests and chaos scripts use them to make one provider fail, hang
or slow down at runtime, and to check afterwards which calls reached it:

- ``GET|PUT|DELETE /_sim/providers/{name}/faults``: the provider's faults;
- ``GET|PUT|DELETE /_sim/providers/{name}/usage``: the usage its answers report when their
  script sets none, ``{"prompt_tokens": P, "completion_tokens": C, "cached_tokens": K}``
  (``cached_tokens`` optional); deleted, usage is computed again;
- ``GET /_sim/providers/{name}/calls?since=EPOCH``: arrival and admission times;
- ``GET /_sim/requests?provider=&tag=&since=SEQ``: the recorded request bodies after
  sequence number ``SEQ``, oldest first, as ``{"requests": [{"seq", "provider", "tag",
  "tags", "time", "body"}], "last_seq": N}``.

``POST /_sim/reset`` (in ``_app``) forgets all of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._faults import FaultsError, parse_faults
from ._providers import Providers, ProviderState
from ._responses import RequestError, error_body, json_response
from ._script import Usage

_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens")


def _bad_request(message: str, param: str | None = None) -> Response:
    return json_response(error_body(400, message, param=param), 400)


def parse_usage(payload: Any) -> Usage:
    """Validate a usage payload; raise ``RequestError`` naming the bad field."""
    if not isinstance(payload, dict):
        raise RequestError("usage settings must be a JSON object")
    unknown = sorted(set(payload) - set(_USAGE_FIELDS))
    if unknown:
        raise RequestError(f"unknown usage setting {unknown[0]!r}", unknown[0])
    cached = payload.get("cached_tokens")
    return Usage(
        _count(payload, "prompt_tokens"),
        _count(payload, "completion_tokens"),
        None if cached is None else _count(payload, "cached_tokens"),
    )


def _count(payload: dict[str, Any], name: str) -> int:
    """A token count field: an integer of at least 0."""
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError(f"{name!r} must be an integer of at least 0", name)
    return value


def _int_param(request: Request, name: str) -> int | None:
    """A non-negative integer query parameter; ``ValueError`` when it is malformed."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise ValueError(name)
    return int(raw)


class _Setting(Protocol):
    def to_json(self) -> dict[str, Any]: ...


def _setting_route(
    providers: Providers,
    kind: str,
    parse: Callable[[Any], _Setting],
    write: Callable[[ProviderState, Any], None],
) -> Route:
    """``/_sim/providers/{name}/KIND``: read, replace (PUT) or clear (DELETE) a setting.

    Every answer is ``{"provider": name, KIND: {...} | null}``.
    """

    async def handle(request: Request) -> Response:
        name: str = request.path_params["name"]
        if request.method == "PUT":
            raw = await request.body()
            try:
                # An empty body is the same as {}: every field at its default.
                payload = json.loads(raw) if raw.strip() else {}
            except ValueError:
                return _bad_request("body is not valid JSON")
            try:
                value = parse(payload)
            except (FaultsError, RequestError) as exc:
                return _bad_request(str(exc.args[0]), exc.param)
            write(providers.state(name), value)
        elif request.method == "DELETE" and (state := providers.get(name)) is not None:
            write(state, None)
        found = providers.get(name)
        setting: _Setting | None = None if found is None else getattr(found, kind)
        return json_response(
            {"provider": name, kind: None if setting is None else setting.to_json()}
        )

    return Route(f"/_sim/providers/{{name}}/{kind}", handle, methods=["GET", "PUT", "DELETE"])


def _requests_route(providers: Providers) -> Route:
    """``/_sim/requests``: the recorded request bodies."""

    async def requests(request: Request) -> Response:
        try:
            since = _int_param(request, "since") or 0
        except ValueError:
            return _bad_request("'since' must be a sequence number (an integer >= 0)", "since")
        found = providers.recorded(
            request.query_params.get("provider") or None,
            request.query_params.get("tag") or None,
            since,
        )
        records = [record.to_json() for record in found]
        return json_response({"requests": records, "last_seq": providers.last_seq})

    return Route("/_sim/requests", requests, methods=["GET"])


def admin_routes(providers: Providers) -> list[Route]:
    """Return the ``/_sim/providers`` routes acting on ``providers``."""

    async def list_providers(request: Request) -> Response:
        return json_response({"providers": providers.snapshot()})

    async def calls(request: Request) -> Response:
        name: str = request.path_params["name"]
        since = 0.0
        raw_since = request.query_params.get("since")
        if raw_since is not None:
            try:
                since = float(raw_since)
            except ValueError:
                since = math.nan
            if math.isnan(since):
                return _bad_request("'since' must be an epoch time in seconds", "since")
        state = providers.get(name)
        # Asking about a provider that was never called is not an error: it saw no calls.
        times = [] if state is None else state.times_since(since)
        admitted = [] if state is None else state.admitted_since(since)
        return json_response({"provider": name, "times": times, "admitted": admitted})

    return [
        Route("/_sim/providers", list_providers, methods=["GET"]),
        _setting_route(providers, "faults", parse_faults, ProviderState.set_faults),
        _setting_route(providers, "usage", parse_usage, ProviderState.set_usage),
        _requests_route(providers),
        Route("/_sim/providers/{name}/calls", calls, methods=["GET"]),
    ]


__all__ = ["admin_routes", "parse_usage"]
