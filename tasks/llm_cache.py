"""The LLM response cache: a run with a ``cache_ttl`` (its own, or its agent's) reuses an answer
to exactly the same call, fleet-wide, within its tenant.

The key is the SHA-256 of everything the call would send: the chain of providers and models,
the messages (after the context budget fitted them), the tools' schemas, the model settings
and the output schema. Any difference is another entry; the entry expires ``cache_ttl``
seconds after it was stored.

Concurrent identical calls make one provider call (single flight): the first takes a short
lease on the entry (``SET NX PX``), makes the call and stores the answer; the others wait for
the answer, looking every :data:`POLL_S`, for as long as one call of the chain's first provider
may take. If the lease ends without an answer (that call failed, or its worker died), the next
one to look takes the lease and calls. Waiting holds the step's thread, as the call would.

A hit costs nothing: no provider call, no tokens, no cost, nothing reserved against a budget;
the run counts it (``usage.cache_hits``) and its ``llm_call_finished`` event says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from agentfleet.tasks import keys
from agentfleet.tasks.llm import CallOptions, Completion, ModelToolCall, Target
from agentfleet.tasks.metrics import label_field

log = logging.getLogger(__name__)

#: How often a call waiting for an identical one in flight looks for its answer.
POLL_S = 0.02


def digest(
    chain: Sequence[Target],
    messages: list[dict[str, Any]],
    tool_schemas: list[dict[str, Any]],
    options: CallOptions,
) -> str:
    """The key of a call: everything it sends, as canonical JSON."""
    sent = {
        "chain": [[t.provider, t.model] for t in chain],
        "messages": messages,
        "tools": tool_schemas,
        "settings": dict(options.settings),
        "output": options.output.schema if options.output is not None else None,
    }
    canonical = json.dumps(sent, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _dump(completion: Completion, target: Target) -> str:
    return json.dumps(
        {
            "content": completion.content,
            "tool_calls": [[c.id, c.name, c.arguments] for c in completion.tool_calls],
            "finish_reason": completion.finish_reason,
            "target": [target.provider, target.model],
        }
    )


def _load(raw: str) -> tuple[Completion, Target]:
    kept = json.loads(raw)
    completion = Completion(
        content=kept["content"],
        tool_calls=[ModelToolCall(i, n, a) for i, n, a in kept["tool_calls"]],
        finish_reason=kept["finish_reason"],
    )
    return completion, Target(*kept["target"])


def _field(target: Target, source: str) -> str:
    return label_field(target.provider, target.model, source)


@dataclass(frozen=True)
class Cached:
    """An answer, and where it came from: ``hit`` (kept), ``shared`` (an identical call in
    flight made it), or ``miss`` (this call made it)."""

    completion: Completion
    target: Target
    source: str

    @property
    def hit(self) -> bool:
        return self.source != "miss"


class ResponseCache:
    """Looks up, waits for, and stores LLM answers (one per process and settings)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis, self.prefix = client, prefix
        self.metric = keys.MetricKeys(prefix).llm_cache

    def answer(
        self,
        tenant: str,
        key: str,
        ttl: float,
        wait_s: float,
        call: Callable[[], tuple[Completion, Target]],
    ) -> Cached:
        """The kept answer under ``key``, or the answer of an identical call in flight (waiting
        up to ``wait_s``), or ``call()``'s, which is then kept for ``ttl`` seconds."""
        entry = keys.llm_cache(self.prefix, tenant, key)
        flight = keys.llm_cache_flight(self.prefix, tenant, key)
        lease_ms = max(int(wait_s * 1000), 1)
        deadline = time.monotonic() + wait_s
        waited = False
        while True:
            raw = self.redis.get(entry)
            if raw is not None:
                return self._kept(str(raw), waited)
            if self.redis.set(flight, "1", nx=True, px=lease_ms):
                # The call in flight may have stored its answer and dropped its lease between
                # the look above and this lease: look once more before calling.
                raw = self.redis.get(entry)
                if raw is None:
                    break
                self.redis.delete(flight)
                return self._kept(str(raw), waited)
            if time.monotonic() >= deadline:
                break  # the call in flight is taking too long: make our own
            waited = True
            time.sleep(POLL_S)
        try:
            completion, target = call()
        except BaseException:
            self.redis.delete(flight)  # the next one waiting calls at once
            raise
        # The answer, the lease dropped and the miss counted, in one round trip.
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(entry, _dump(completion, target), px=max(int(ttl * 1000), 1))
        pipe.delete(flight)
        pipe.hincrby(self.metric, _field(target, "miss"), 1)
        pipe.execute()
        return Cached(completion, target, "miss")

    def _kept(self, raw: str, waited: bool) -> Cached:
        completion, target = _load(raw)
        found = Cached(completion, target, "shared" if waited else "hit")
        self._count(found)
        return found

    def _count(self, found: Cached) -> None:
        try:
            self.redis.hincrby(self.metric, _field(found.target, found.source), 1)
        except redis.RedisError as exc:  # a metric must never fail the call it measures
            log.warning("metrics: could not count an LLM cache %s: %s", found.source, exc)
