"""Fleet-wide metrics, written to Redis where the work happens and read by ``GET /metrics``.

Workers are separate processes on many hosts, so an in-process Prometheus counter would show
one process's share. Every number is kept in Redis instead, and any API replica serves the
whole fleet's (:mod:`agentfleet.producer.metrics`). Its keys (run and step
counts and histograms, LLM usage, runs and usage per agent, admission denials, tool-cache hits
and misses) are named in
:class:`agentfleet.tasks.keys.MetricKeys`.

A histogram hash holds one field per bucket (its upper bound, ``+Inf`` for the last) counting
the observations that fall in that bucket alone, and ``sum``; the reader accumulates them.
One ``HINCRBY`` per observation, instead of one per bucket above it.

Runs and steps are counted by the Lua scripts of :mod:`agentfleet.tasks.scripts`, in the transition
that makes them true: a run when it is created and once when it becomes final (also per agent);
a step once, when its answer is applied (its usage also per agent); a cached tool's hit or
miss once, when the call's result is stored. :class:`Recorder` writes the admission denials,
and never fails the work it measures: a write that fails is logged and dropped.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, ParamSpec

import redis

from agentfleet.tasks.keys import MetricKeys
from agentfleet.tasks.states import RunStatus

if TYPE_CHECKING:
    from agentfleet.tasks.llm._routing import Target

log = logging.getLogger(__name__)

#: Upper bounds (s) of the run-latency buckets: a run takes from under a second (one step,
#: fast model) to many minutes (long tool chains, waiting for providers).
RUN_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Upper bounds (s) of the step-latency buckets: one LLM call plus a few Redis scripts.
STEP_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

#: Terminal statuses counted in ``<p>:metrics:runs``.
FINISHED_STATUSES: Final = tuple(s.value for s in RunStatus if s.terminal)
#: Why a provider refused a call (``ProviderGuard.admit`` outcomes, rate limits split).
DENIAL_REASONS: Final = ("breaker_open", "breaker_half_open", "retry_after", "rpm", "tpm")
_DENIAL_OF_OUTCOME: Final = {
    "open": "breaker_open",
    "probing": "breaker_half_open",  # half-open, and its fleet-wide probes are all out
    "hold": "retry_after",
}
#: Token kinds in ``<p>:metrics:llm``, next to the ``calls`` count.
TOKEN_KINDS: Final = ("prompt", "completion")
#: What a cached tool's cache had for a call, in ``<p>:metrics:tool_cache``.
CACHE_RESULTS: Final = ("hit", "miss")


def bucket_field(bounds: Sequence[float], value: float) -> str:
    """The histogram field ``value`` is counted in: the first bound >= value, else ``+Inf``."""
    index = bisect_left(bounds, value)
    return "+Inf" if index == len(bounds) else format_bound(bounds[index])


def format_bound(bound: float) -> str:
    """A bucket bound as Prometheus writes ``le``: ``0.5``, ``1.0``, ``+Inf``."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def label_field(*labels: str) -> str:
    """A hash field naming a label set; JSON, so any character in a model name is safe."""
    return json.dumps(labels, separators=(",", ":"))


def step_fields(seconds: float, target: Target) -> dict[str, Any]:
    """What the step-applying script counts for a step that took ``seconds`` to answer."""
    who = (target.provider, target.model)
    return {
        "bucket": bucket_field(STEP_BUCKETS, seconds),
        "seconds": seconds,
        "calls": label_field(*who, "calls"),
        "prompt": label_field(*who, "prompt"),
        "completion": label_field(*who, "completion"),
    }


_P = ParamSpec("_P")


def _best_effort(method: Callable[_P, None]) -> Callable[_P, None]:
    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception as exc:  # a metric must never fail the run it measures
            log.warning("metrics: could not record %s: %s", method.__name__, exc)

    return wrapper


class Recorder:
    """Writes the fleet's metrics; each method is one round trip and never raises."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.keys = MetricKeys(prefix)

    @_best_effort
    def admission(self, provider: str, reply: Sequence[str]) -> None:
        """Count a refusal in ``reply`` (the admission script's answer); nothing for ``ok``."""
        outcome = reply[0]
        if outcome == "ok":
            return
        if outcome == "limited":
            # The script names the limits that said no; either may, or both.
            reasons = [r for r in (reply[4] if len(reply) > 4 else "").split(",") if r]
        else:
            reasons = [_DENIAL_OF_OUTCOME.get(outcome, outcome)]
        pipe = self.redis.pipeline(transaction=False)
        for reason in reasons:
            pipe.hincrby(self.keys.admission_denials, label_field(provider, reason), 1)
        pipe.execute()
