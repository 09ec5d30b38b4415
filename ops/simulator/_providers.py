"""Per-provider state: fault and usage settings, counters, call times and request bodies."""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ._faults import Faults
from ._script import Usage

CALL_LOG_LIMIT = 20_000
"""Arrival times kept per provider; older ones are forgotten first."""

RECORD_LIMIT = 1000
"""Request bodies kept per provider unless configured otherwise; older ones go first."""


#: Sent by agentfleet's workers: when the fleet admitted the call (its breaker and limits
#: said yes). Logged next to the arrival time, so a test can tell a call admitted while a
#: breaker was open from one admitted earlier that was still on its way.
ADMITTED_HEADER = b"x-agentfleet-admitted-at"


def _call_log() -> deque[tuple[float, float | None]]:
    return deque(maxlen=CALL_LOG_LIMIT)


@dataclass(frozen=True, slots=True)
class Recorded:
    """One chat request as it arrived."""

    seq: int
    """Position among all recorded requests of the simulator, from 1; never reused."""
    provider: str
    tags: tuple[str, ...]
    time: float
    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """Return the record as ``GET /_sim/requests`` lists it."""
        return {
            "seq": self.seq,
            "provider": self.provider,
            # The first tag is the request's tag; all of them are listed too.
            "tag": self.tags[0] if self.tags else None,
            "tags": list(self.tags),
            "time": self.time,
            "body": self.body,
        }


@dataclass(slots=True, eq=False)
class ProviderState:
    """Everything the simulator tracks for one provider name."""

    name: str
    record_limit: int = RECORD_LIMIT
    faults: Faults | None = None
    usage: Usage | None = None
    """Usage reported by answers whose script sets none (``None``: computed)."""
    requests: int = 0
    errors_sent: int = 0
    """Responses sent because of the fault settings (injected errors and hang 504s)."""
    in_flight: int = 0
    calls: deque[tuple[float, float | None]] = field(default_factory=_call_log)
    """(arrival, admitted-at or None) epoch times of chat requests, oldest first."""
    recorded: deque[Recorded] = field(init=False)
    """The last ``record_limit`` request bodies, oldest first."""
    rng: random.Random = field(init=False)
    """Decides injected errors; seeded by name so runs are reproducible."""

    def __post_init__(self) -> None:
        self.recorded = deque(maxlen=self.record_limit)
        self.reseed()

    def reseed(self) -> None:
        """Restart the error sequence from the provider's fixed seed."""
        # String seeds are hashed with SHA-512, so they do not depend on
        # PYTHONHASHSEED and every run sees the same sequence.
        self.rng = random.Random(f"agentfleet-simulator:{self.name}")

    def set_faults(self, faults: Faults | None) -> None:
        """Replace (or with ``None`` clear) the fault settings."""
        self.faults = faults
        # Each new configuration replays the same error pattern from its start.
        self.reseed()

    def set_usage(self, usage: Usage | None) -> None:
        """Replace (or with ``None`` clear) the default usage of answers."""
        self.usage = usage

    def times_since(self, since: float) -> list[float]:
        """Return the logged arrival times at or after ``since``."""
        return [arrived for arrived, _ in self.calls if arrived >= since]

    def admitted_since(self, since: float) -> list[float | None]:
        """The admission times sent with the calls that arrived at or after ``since``."""
        return [admitted for arrived, admitted in self.calls if arrived >= since]

    def snapshot(self) -> dict[str, Any]:
        """Return the faults and counters as a JSON-ready dict."""
        return {
            "faults": None if self.faults is None else self.faults.to_json(),
            "usage": None if self.usage is None else self.usage.to_json(),
            "requests": self.requests,
            "errors_sent": self.errors_sent,
            "in_flight": self.in_flight,
        }


class Providers:
    """The providers seen by chat requests or configured through the admin routes."""

    def __init__(self, record_limit: int = RECORD_LIMIT) -> None:
        self._states: dict[str, ProviderState] = {}
        self._record_limit = record_limit
        # Not restarted by reset(), so a reader's "since" stays meaningful across resets.
        self._seq = 0

    def get(self, name: str) -> ProviderState | None:
        """Return the state of ``name`` without creating it."""
        return self._states.get(name)

    def state(self, name: str) -> ProviderState:
        """Return the state of ``name``, creating it on first use."""
        found = self._states.get(name)
        if found is None:
            found = self._states[name] = ProviderState(name, self._record_limit)
        return found

    def arrive(self, name: str, admitted_at: float | None = None) -> ProviderState:
        """Count and log a chat request to ``name`` as it arrives."""
        state = self.state(name)
        state.requests += 1
        state.in_flight += 1
        state.calls.append((time.time(), admitted_at))
        return state

    def record(self, state: ProviderState, body: dict[str, Any], tags: tuple[str, ...]) -> None:
        """Keep the body of a chat request to ``state``'s provider."""
        if self._record_limit <= 0:
            return
        self._seq += 1
        state.recorded.append(Recorded(self._seq, state.name, tags, time.time(), body))

    def recorded(
        self, provider: str | None = None, tag: str | None = None, since: int = 0
    ) -> list[Recorded]:
        """The kept requests after sequence number ``since``, oldest first, filtered."""
        states = list(self._states.values()) if provider is None else [self.get(provider)]
        found = [
            record
            for state in states
            if state is not None
            for record in state.recorded
            if record.seq > since and (tag is None or tag in record.tags)
        ]
        return sorted(found, key=lambda record: record.seq)

    @property
    def last_seq(self) -> int:
        """The sequence number of the latest recorded request (0 before the first)."""
        return self._seq

    def reset(self) -> None:
        """Forget faults, usage settings, counters, call logs and recorded requests.

        Providers with requests still running are kept so those requests
        stay counted as in flight when they finish.
        """
        self._states = {name: s for name, s in self._states.items() if s.in_flight > 0}
        for state in self._states.values():
            state.set_faults(None)
            state.set_usage(None)
            state.recorded.clear()
            state.requests = 0
            state.errors_sent = 0
            state.calls.clear()

    def snapshot(self) -> dict[str, Any]:
        """Return every provider's faults and counters, by name."""
        return {name: self._states[name].snapshot() for name in sorted(self._states)}


def admitted_at(headers: list[tuple[bytes, bytes]]) -> float | None:
    """The admission time a request carries, if any (malformed values are ignored)."""
    for key, value in headers:
        if key == ADMITTED_HEADER:
            try:
                return float(value)
            except ValueError:
                return None
    return None


__all__ = [
    "ADMITTED_HEADER",
    "CALL_LOG_LIMIT",
    "RECORD_LIMIT",
    "ProviderState",
    "Providers",
    "Recorded",
    "admitted_at",
]
