"""Admin routes for per-provider fault injection under ``/_sim/providers``.

Resilience tests and chaos scripts use them to make one provider fail, hang
or slow down at runtime, and to check afterwards which calls reached it.
"""

from __future__ import annotations

import json
import math

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._faults import FaultsError, parse_faults
from ._providers import Providers
from ._responses import error_body, json_response


def _bad_request(message: str, param: str | None = None) -> Response:
    return json_response(error_body(400, message, param=param), 400)


def _faults_answer(name: str, providers: Providers) -> Response:
    """Answer ``{"provider": name, "faults": {...} | null}``."""
    state = providers.get(name)
    faults = None if state is None or state.faults is None else state.faults.to_json()
    return json_response({"provider": name, "faults": faults})


def admin_routes(providers: Providers) -> list[Route]:
    """Return the ``/_sim/providers`` routes acting on ``providers``."""

    async def list_providers(request: Request) -> Response:
        return json_response({"providers": providers.snapshot()})

    async def faults(request: Request) -> Response:
        name: str = request.path_params["name"]
        if request.method == "GET":
            return _faults_answer(name, providers)
        if request.method == "DELETE":
            state = providers.get(name)
            if state is not None:
                state.set_faults(None)
            return _faults_answer(name, providers)
        raw = await request.body()
        try:
            # An empty body is the same as {}: every setting at its default.
            payload = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return _bad_request("body is not valid JSON")
        try:
            settings = parse_faults(payload)
        except FaultsError as exc:
            return _bad_request(str(exc), exc.param)
        providers.state(name).set_faults(settings)
        return _faults_answer(name, providers)

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
        Route("/_sim/providers/{name}/faults", faults, methods=["GET", "PUT", "DELETE"]),
        Route("/_sim/providers/{name}/calls", calls, methods=["GET"]),
    ]


__all__ = ["admin_routes"]
