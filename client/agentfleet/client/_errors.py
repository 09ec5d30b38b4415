"""The client's exceptions: one tree, so ``except ClientError`` catches all it raises.

::

    ClientError
    ├── ApiError             the API answered with an error status (``status``, ``message``)
    │   ├── BadRequest       400: e.g. a Last-Event-ID that is not an event ID
    │   ├── Unauthorized     401: no API key, or one the API does not know
    │   ├── NotFound         404: no such run, tool call or batch (of this key's tenant)
    │   ├── Conflict         409: already final, or the same Idempotency-Key in flight
    │   ├── PayloadTooLarge  413: the request body is over the API's limit
    │   ├── InvalidRequest   422: the request breaks a rule (``problems`` says which)
    │   ├── TooManyRequests  429: the tenant's daily budget is spent (``retry_after``: until
    │   │                    it resets)
    │   └── Unavailable      503: the fleet cannot take work now; retry after ``retry_after``
    ├── ProtocolError        the answer is not what the agentfleet API sends
    ├── Unreachable          no answer: connecting failed, the connection broke, or timed out
    └── WaitTimeout          a ``wait*`` ran out of time (also a ``TimeoutError``)

Every exception passes all its arguments to ``Exception.__init__``, so it pickles and copies.
"""

from __future__ import annotations

import json
from typing import Any


class ClientError(Exception):
    """Everything the agentfleet client raises."""


class ApiError(ClientError):
    """The API answered with an error status. ``args == (status, detail, retry_after)``.

    ``detail`` is the ``detail`` of the answer's JSON body as sent (a string, or a list of
    ``{"loc", "msg", ...}`` problems), ``message`` the same in words, ``retry_after`` the
    seconds of a ``Retry-After`` header (None without one).
    """

    def __init__(self, status: int, detail: Any, retry_after: float | None = None) -> None:
        super().__init__(status, detail, retry_after)

    @property
    def status(self) -> int:
        return int(self.args[0])

    @property
    def detail(self) -> Any:
        return self.args[1]

    @property
    def retry_after(self) -> float | None:
        value: float | None = self.args[2]
        return value

    @property
    def message(self) -> str:
        """The server's message; a list of problems as ``field: message; ...``."""
        if isinstance(self.detail, str):
            return self.detail
        if problems := _problems(self.detail):
            return "; ".join(f"{field}: {text}" if field else text for field, text in problems)
        return json.dumps(self.detail)

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"


class BadRequest(ApiError):
    """400: the request is malformed."""


class Unauthorized(ApiError):
    """401: no API key, or a key the API does not know."""


class NotFound(ApiError):
    """404: no such run, tool call or batch; another tenant's work does not exist either."""


class Conflict(ApiError):
    """409: the run or batch is already final, or a request with the same Idempotency-Key is
    still in progress (then ``retry_after`` is set)."""


class PayloadTooLarge(ApiError):
    """413: the request body is larger than the API accepts."""


class InvalidRequest(ApiError):
    """422: the request breaks a rule; ``problems`` lists ``(field, message)`` pairs."""

    @property
    def problems(self) -> list[tuple[str, str]]:
        return _problems(self.detail)


class TooManyRequests(ApiError):
    """429: the tenant may start no new work now (its daily token or cost budget is spent);
    ``retry_after`` is the seconds until the budget resets, ``message`` says which."""


class Unavailable(ApiError):
    """503: the fleet cannot take the work now (e.g. Redis is down); nothing was kept, so
    sending the same request again after ``retry_after`` seconds is safe."""


class ProtocolError(ClientError):
    """The answer is not what the agentfleet API sends: not JSON, or not the expected shape
    (is the URL the API's?)."""


class Unreachable(ClientError):
    """No answer from the API: connecting failed, the connection broke, or it timed out.
    The underlying ``httpx`` error is the ``__cause__``."""


class RunError(ClientError):
    """A run that :meth:`Client.run` waited for ended without succeeding: ``run`` is its
    final record (``run.error`` says why)."""

    def __init__(self, run: Any) -> None:
        error = run.error
        why = f"{error.code}: {error.message}" if error else run.status
        super().__init__(f"run {run.id} {run.status}: {why}")
        self.run = run


class WaitTimeout(ClientError, TimeoutError):
    """A ``wait``, ``wait_tool_call`` or ``wait_batch`` ran out of time; the work goes on."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: TooManyRequests,
    503: Unavailable,
}


def api_error(status: int, body: str, retry_after: str | None) -> ApiError:
    """The error for an answer of ``status`` with ``body``: the class of its status (else
    ``ApiError``), with the body's ``detail`` (else the body itself)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    detail = parsed["detail"] if isinstance(parsed, dict) and "detail" in parsed else body
    try:
        seconds = float(retry_after) if retry_after is not None else None
    except ValueError:  # an HTTP date: the API never sends one
        seconds = None
    return _BY_STATUS.get(status, ApiError)(status, detail, seconds)


def _problems(detail: Any) -> list[tuple[str, str]]:
    """A validation error's list of problems as ``(field, message)``, the ``body`` of each
    location left out; [] for any other detail."""
    if not isinstance(detail, list) or not all(isinstance(d, dict) and "msg" in d for d in detail):
        return []
    return [
        (".".join(str(p) for p in item.get("loc", ()) if p != "body"), str(item["msg"]))
        for item in detail
    ]
