"""Fault settings of one provider: validation of the admin payload and the decisions.

Nothing here does I/O; ``_app`` applies the settings to chat requests and
``_admin`` serves them over HTTP.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any

DEFAULT_STATUS = 500
"""Status answered by a failing request when the settings name none."""

DEFAULT_HANG_SECONDS = 300.0
"""How long a hanging request waits before answering 504, unless told otherwise."""

HANG_STATUS = 504
"""Status answered by a hanging request that outlives its ``hang_seconds``."""


@dataclass(frozen=True, slots=True)
class Faults:
    """How one provider misbehaves; the defaults are a well-behaved provider."""

    error_rate: float = 0.0
    """Probability in ``[0, 1]`` that a request is answered with ``status``."""
    status: int = DEFAULT_STATUS
    """HTTP status (400..599) of an injected error."""
    retry_after: float | None = None
    """Seconds advertised in ``retry-after``/``retry-after-ms`` on injected errors."""
    hang: bool = False
    """Hold every request for ``hang_seconds`` and then answer 504."""
    hang_seconds: float = DEFAULT_HANG_SECONDS
    """How long a hanging request is held."""
    latency: float | None = None
    """Seconds to wait before answering; overrides the directive and server latency."""
    code: str | None = None
    """``error.code`` of an injected error (e.g. ``insufficient_quota``); by default
    ``rate_limit_exceeded`` for a 429 and none otherwise."""

    def to_json(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict with every field present."""
        return dataclasses.asdict(self)

    def fails(self, rng: random.Random) -> bool:
        """Decide whether the next request gets an injected error."""
        # random() lies in [0, 1), so a rate of 1.0 always fails and 0.0 never does.
        return rng.random() < self.error_rate

    def error_code(self) -> str | None:
        """Return the ``error.code`` of an injected error."""
        if self.code is not None:
            return self.code
        return "rate_limit_exceeded" if self.status == 429 else None

    def error_headers(self) -> dict[str, str] | None:
        """Return the retry hint headers of an injected error, if any."""
        if self.retry_after is None:
            return None
        # Clients read whole seconds from retry-after, so round up to never
        # advertise a shorter wait than intended; retry-after-ms is exact.
        return {
            "retry-after": str(math.ceil(self.retry_after)),
            "retry-after-ms": str(round(self.retry_after * 1000)),
        }


class FaultsError(ValueError):
    """Invalid fault settings; ``param`` names the offending field when there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


_FIELDS = frozenset(field.name for field in dataclasses.fields(Faults))


def parse_faults(payload: Any) -> Faults:
    """Validate an admin payload and return the settings it describes.

    Every field is optional and ``null`` means "the default". Unknown fields
    are rejected so that a misspelt setting cannot silently do nothing.
    """
    if not isinstance(payload, dict):
        raise FaultsError("fault settings must be a JSON object")
    unknown = sorted(set(payload) - _FIELDS)
    if unknown:
        raise FaultsError(f"unknown fault setting {unknown[0]!r}", unknown[0])

    status = _status(payload.get("status"))
    # Naming a status asks for errors, so it implies "always" unless a rate is given.
    default_rate = 1.0 if status is not None else 0.0
    error_rate = _number(payload, "error_rate", high=1.0)
    hang = payload.get("hang")
    if hang is not None and not isinstance(hang, bool):
        raise FaultsError("'hang' must be true or false", "hang")
    hang_seconds = _number(payload, "hang_seconds")
    code = payload.get("code")
    if code is not None and (not isinstance(code, str) or not 0 < len(code) <= 64):
        raise FaultsError("'code' must be a string of 1 to 64 characters", "code")
    return Faults(
        error_rate=default_rate if error_rate is None else error_rate,
        status=DEFAULT_STATUS if status is None else status,
        retry_after=_number(payload, "retry_after"),
        hang=bool(hang),
        hang_seconds=DEFAULT_HANG_SECONDS if hang_seconds is None else hang_seconds,
        latency=_number(payload, "latency"),
        code=code,
    )


def _status(value: Any) -> int | None:
    """Validate ``status``: an integer error status, or ``None`` when absent."""
    if value is None:
        return None
    # bool is an int subclass; "status": true is a mistake, not status 1.
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise FaultsError("'status' must be an integer from 400 to 599", "status")
    return value


def _number(payload: dict[str, Any], name: str, high: float | None = None) -> float | None:
    """Validate a non-negative finite number field, or return ``None`` when absent."""
    value = payload.get(name)
    if value is None:
        return None
    bounds = "from 0 to 1" if high is not None else "of at least 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultsError(f"{name!r} must be a number {bounds}", name)
    number = float(value)
    # NaN and infinities arrive through Python's lenient JSON parser.
    if not math.isfinite(number) or number < 0 or (high is not None and number > high):
        raise FaultsError(f"{name!r} must be a number {bounds}", name)
    return number


__all__ = [
    "DEFAULT_HANG_SECONDS",
    "DEFAULT_STATUS",
    "HANG_STATUS",
    "Faults",
    "FaultsError",
    "parse_faults",
]
