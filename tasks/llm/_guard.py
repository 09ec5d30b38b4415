"""Fleet-wide protection of one provider: circuit breaker, Retry-After hold, rate limits.

State lives in Redis so every worker process on every host sees the same breaker:

- The breaker is pybreaker's, on ``CircuitRedisStorage`` (namespace per provider). Its
  ``call()`` holds a lock for the whole guarded call, which would turn a gevent pool into one
  LLM call at a time, so the call itself is never made inside it. Admission reads the stored
  state in one Lua script; afterwards the outcome is replayed through ``breaker.call`` (a
  lock held for microseconds), so pybreaker still counts failures, opens, half-opens and
  closes, and notifies listeners.
- Half-open allows ``max_probes`` trial calls across the whole fleet, not one per process.
- A ``Retry-After`` from the provider holds every call to it until it elapses.
- Requests and tokens per minute are GCRA limits, checked and spent in the same script; a
  denied call is reported with its wait so the step is rescheduled, never slept on.

Only failures of the provider or of our account there count: 5xx, timeouts, connection
errors, 408/409, and 401, 402, 403, 404 and ``insufficient_quota``. Errors of the request
(400, 422), other 429s and Celery's control flow are never replayed into the breaker, so they
neither trip nor close it.

Every script reads the time from Redis (``TIME``): the breaker's opening time, the reset
timeout counted from it, the hold and the limits are on one clock for the whole fleet.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pybreaker
import redis

from agentfleet.tasks import keys
from agentfleet.tasks.errors import ProviderError, RateLimitedError, RetryableProviderError
from agentfleet.tasks.luafiles import script
from agentfleet.tasks.metrics import Recorder
from agentfleet.tasks.redisconn import get_redis
from agentfleet.tasks.setting_groups import ProviderConfig
from agentfleet.tasks.settings import Settings

log = logging.getLogger(__name__)


def _timed(name: str) -> str:
    """Script ``lua/<name>.lua`` of this package, after the clock every one of them reads."""
    return script("agentfleet.tasks.llm", name, ("_clock",))


_ADMIT = _timed("admit")
_CORRECT_TOKENS = _timed("correct_tokens")
_HOLD = _timed("hold")
_MARK_OPENED = _timed("mark_opened")
_ANNOUNCE = _timed("announce")


@dataclass(frozen=True)
class Admission:
    """The answer to "may I call this provider now?"."""

    outcome: str  # ok | hold | open | probing | limited
    wait_s: float
    probe: bool
    tokens: int
    at: float
    #: The breaker was closed with no failure counted when the call was admitted.
    clean: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


_STATES = (pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN)


def _replay(exc: BaseException | None) -> None:
    if exc is not None:
        raise exc


class _FleetStorage(pybreaker.CircuitRedisStorage):
    """pybreaker's Redis storage, with the opening time to the microsecond on Redis's clock.

    pybreaker keeps ``opened_at`` in whole seconds, rounded down, and stamps it with the
    clock of the process that tripped: a breaker opened 0.9 s into a second would let probes
    through 0.9 s before its reset timeout. Here it is Redis's ``TIME``, which the admission
    script reads too, so the whole fleet counts the reset timeout from the same instant.
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        super().__init__(pybreaker.STATE_CLOSED, client, namespace=namespace)
        self._opened_key = keys.breaker(namespace, "opened_at")
        self._mark_opened = client.register_script(_MARK_OPENED)

    @property
    def opened_at(self) -> datetime | None:
        try:
            raw = self._redis.get(self._opened_key)
        except redis.RedisError:
            log.exception("could not read when %s opened", self._opened_key)
            return None
        return datetime.fromtimestamp(float(raw), UTC) if raw else None

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        # ``now`` is this process's clock; the fleet's is Redis's.
        try:
            self._mark_opened(keys=[self._opened_key])
        except redis.RedisError:
            log.exception("could not store when %s opened", self._opened_key)


class _Announcer(pybreaker.CircuitBreakerListener):
    """Logs and publishes each state change once for the whole fleet, not once per process."""

    def __init__(self, guard: ProviderGuard) -> None:
        self.guard = guard

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        g = self.guard
        old = old_state.name if old_state else "unknown"
        try:
            # pybreaker's open()/close() run ``self.state = storage.state = X``: chained
            # assignment calls this listener *before* Redis holds X. The first announcer
            # stores X (and, for an opening, its time): the fleet sees it from this instant.
            if not g.announce(new_state.name, old):
                return  # another process announced this state already
        except redis.RedisError:
            log.exception("could not announce the breaker state of %s", g.provider.name)
            return
        log.warning("provider %s: circuit %s -> %s", g.provider.name, old, new_state.name)


class ProviderGuard:
    """Breaker, Retry-After hold and rate limits of one provider."""

    def __init__(self, provider: ProviderConfig, settings: Settings) -> None:
        self.provider = provider
        self.ns = keys.provider(settings.redis.key_prefix, provider.name)
        self.events_key = keys.provider_events(settings.redis.key_prefix)
        self.announce_prefix = keys.announced(self.ns)
        self.redis = get_redis(settings)
        names = ("state", "fail_counter", "success_counter", "opened_at")
        self.keys = {n: keys.breaker(self.ns, n) for n in names} | {
            "probes": keys.provider_probes(self.ns),
            "hold": keys.provider_hold(self.ns),
            "rpm": keys.provider_rpm(self.ns),
            "tpm": keys.provider_tpm(self.ns),
        }
        self.storage = _FleetStorage(get_redis(settings, decode=False), self.ns)
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=provider.fail_max,
            reset_timeout=provider.reset_timeout,
            name=provider.name,
            throw_new_error_on_trip=False,
            state_storage=self.storage,
            listeners=[_Announcer(self)],
        )
        self._admit = self.redis.register_script(_ADMIT)
        self._correct = self.redis.register_script(_CORRECT_TOKENS)
        self._hold = self.redis.register_script(_HOLD)
        self._announce = self.redis.register_script(_ANNOUNCE)
        self.metrics = Recorder(self.redis, settings.redis.key_prefix)
        # A probe that never reports back (its worker died) frees its slot after this long.
        self._probe_ttl_ms = int((provider.timeout + provider.connect_timeout + 5) * 1000)

    def admit(self, estimated_tokens: int) -> Admission:
        k = self.keys
        reply = self._admit(
            keys=[
                k["state"],
                k["opened_at"],
                k["success_counter"],
                k["probes"],
                k["hold"],
                k["rpm"],
                k["tpm"],
                self.events_key,
                k["fail_counter"],
            ],
            args=[
                self.provider.reset_timeout,
                self.provider.max_probes,
                self._probe_ttl_ms,
                self.provider.rpm or 0,
                self.provider.tpm or 0,
                self.provider.burst_seconds,
                estimated_tokens,
                self.provider.name,
                self.announce_prefix,
            ],
        )
        if reply[3] == "1":
            log.warning("provider %s: circuit open -> half-open", self.provider.name)
        self.metrics.admission(self.provider.name, reply)
        outcome, wait, probe, _, _, clean, at = reply
        return Admission(
            outcome, float(wait), probe == "1", estimated_tokens, float(at), clean == "1"
        )

    def succeeded(self, admission: Admission, actual_tokens: int) -> None:
        # A success on a clean closed breaker would only set the failure count to the 0 it
        # already is: skip pybreaker's two round trips (read the state, reset the count),
        # which every step paid. Any other success goes through the breaker.
        if not admission.clean:
            self._record(admission, None)
        if self.provider.tpm and actual_tokens != admission.tokens:
            self._correct(
                keys=[self.keys["tpm"]],
                args=[self.provider.tpm, actual_tokens - admission.tokens],
            )

    def failed(self, admission: Admission, exc: ProviderError) -> None:
        """A provider or account failure: counted by the breaker, except a 429's."""
        if isinstance(exc, RetryableProviderError) and exc.retry_after:
            self._hold(keys=[self.keys["hold"]], args=[exc.retry_after])
        if isinstance(exc, RateLimitedError):
            # A 429 says the provider is up and busy: the hold and the limiter handle it.
            # Replaying it as a success would reset the failure count (or close a half-open
            # breaker), so the breaker hears nothing of it.
            self.release(admission)
            return
        self._record(admission, exc)

    def release(self, admission: Admission) -> None:
        """The call ended without a provider verdict (a 4xx, a time limit): count nothing."""
        if admission.probe:
            self.redis.delete(self.keys["probes"])

    def _record(self, admission: Admission, exc: BaseException | None) -> None:
        try:
            self.breaker.call(_replay, exc)
        except (pybreaker.CircuitBreakerError, ProviderError):
            pass  # the replayed failure itself, or the breaker was open already
        finally:
            if admission.probe:
                self.redis.delete(self.keys["probes"])

    def announce(self, state: str, old: str) -> bool:
        """Store and publish a breaker state change; False if another process did already."""
        k = self.keys
        markers = [keys.announced(self.ns, state)] + [
            keys.announced(self.ns, s) for s in _STATES if s != state
        ]
        script_keys = [*markers, k["state"], k["opened_at"], self.events_key]
        args: list[str | int] = [state, old, self.provider.name, os.getpid()]
        return bool(self._announce(keys=script_keys, args=args))

    def snapshot(self) -> dict[str, Any]:
        """State for ``GET /v1/providers``."""
        k = self.keys
        values = self.redis.mget(
            [
                k["state"],
                k["fail_counter"],
                k["opened_at"],
                k["hold"],
                k["probes"],
                k["rpm"],
                k["tpm"],
            ]
        )
        state, fails, opened_at, hold, probes, rpm_tat, tpm_tat = (
            None if v is None else str(v) for v in values
        )
        now = time.time()
        opened = float(opened_at or 0)
        to_half_open = opened + self.provider.reset_timeout - now if state == "open" else 0.0
        return {
            "name": self.provider.name,
            "base_url": self.provider.base_url,
            "state": state or "closed",
            "failures": int(fails or 0),
            "fail_max": self.provider.fail_max,
            "opened_at": opened or None,
            "seconds_to_half_open": round(max(to_half_open, 0.0), 3),
            "probes_in_flight": int(probes or 0),
            "held_for_seconds": round(max(float(hold or 0) - now, 0.0), 3),
            "rpm": self._fill(self.provider.rpm, rpm_tat, now),
            "tpm": self._fill(self.provider.tpm, tpm_tat, now),
        }

    def _fill(self, per_minute: int | None, tat: str | None, now: float) -> dict[str, Any] | None:
        if not per_minute:
            return None
        # Units spent and not yet replenished, out of the burst the limiter allows.
        interval = 60.0 / per_minute
        spent = max(float(tat or 0) - now, 0.0) / interval
        capacity = max(self.provider.burst_seconds / interval, 1.0)
        return {
            "limit_per_minute": per_minute,
            "in_use": round(spent, 2),
            "burst": round(capacity, 2),
            "fill": round(min(spent / capacity, 1.0), 3),
        }


_guards: dict[tuple[int, int, str], ProviderGuard] = {}


def get_guard(settings: Settings, provider: ProviderConfig) -> ProviderGuard:
    """The process's guard for ``provider`` (made after fork; its pybreaker is per process)."""
    key = (os.getpid(), id(settings), provider.name)
    guard = _guards.get(key)
    if guard is None:
        guard = _guards[key] = ProviderGuard(provider, settings)
    return guard


def estimate_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
    """A rough token count before the call (about 4 characters a token, plus an answer)."""
    chars = len(json.dumps(messages)) + (len(json.dumps(tools)) if tools else 0)
    return chars // 4 + 256
