"""JSON and OpenAI-style error responses shared by the simulator's routes."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response


class RequestError(ValueError):
    """A chat request the simulator refuses with a 400, as OpenAI would.

    ``param`` names the offending request field (dotted for nested ones), as in
    the ``param`` of OpenAI's error object.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param)
        self.message = message
        self.param = param


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """Return an OpenAI-style error object for ``status``."""
    if status == 429:
        kind = "rate_limit_error"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Serialise with plain ``json.dumps``: the cheapest path for the hot route."""
    return Response(
        json.dumps(payload, separators=(",", ":")),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


__all__ = ["RequestError", "error_body", "json_response"]
