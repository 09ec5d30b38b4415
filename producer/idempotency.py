"""``Idempotency-Key`` on POSTs: the same key from the same tenant gets the same answer.

A request with a key reads the key's answer first: one kept already is replayed (with
``Idempotent-Replayed: true``), or refused with a 422 if it answered a different request.
Otherwise the request does its work, and the one Redis step that accepts the work keeps the
answer too (:meth:`agentfleet.tasks.store.RunStore.accept`): the answer is kept if and only if the
work was accepted. A 503 keeps nothing and holds nothing, so the retry that ``Retry-After`` asks for
goes through; a request whose acceptance was applied but whose reply was lost is answered by its
retry from the kept answer, with the same ID and no second run.

Two requests racing with one key both prepare their work; the first one accepted wins, and
the other withdraws its own and replays the winner's answer. An answer that accepts nothing
(a cancel, a 4xx) is kept once produced, unless a racing request kept one first. Answers
are kept ``AGENTFLEET_IDEMPOTENCY_TTL`` seconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from fastapi.responses import JSONResponse

from agentfleet.tasks import keys
from agentfleet.tasks.errors import Answered
from agentfleet.tasks.store import RunStore

MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"


@dataclass
class Slot:
    """Where a request's Idempotency-Key keeps its answer."""

    key: str
    fingerprint: str
    #: The answer was kept in the same step that accepted the work.
    kept: bool = False

    def answer(self, status: int, body: dict[str, Any]) -> str:
        """The stored form of an answer to this request."""
        return json.dumps({"fingerprint": self.fingerprint, "status": status, "body": body})


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def run_once(
    store: RunStore,
    tenant: str,
    key: str | None,
    fingerprint: str,
    produce: Callable[[Slot | None], JSONResponse],
) -> JSONResponse:
    """``produce(slot)`` once per (tenant, key); later calls get its kept answer.

    ``produce`` keeps the answer itself when it accepts work (and sets ``slot.kept``), or
    raises :class:`Answered` when another request with the key was accepted first.
    """
    if key is None:
        return produce(None)
    if not key or len(key) > MAX_KEY_LENGTH:
        return _problem(422, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    digest = hashlib.sha256(key.encode()).hexdigest()
    slot = Slot(keys.idempotency(store.settings.redis.key_prefix, tenant, digest), fingerprint)
    kept = cast(str | None, store.redis.get(slot.key))
    if kept is None:
        try:
            response = produce(slot)
        except Answered as first:
            kept = first.message
        else:
            if slot.kept or response.status_code >= 500:
                return response
            kept = _keep(store, slot, response)
            if kept is None:
                return response
    return _replay(kept, fingerprint)


def _keep(store: RunStore, slot: Slot, response: JSONResponse) -> str | None:
    """Keep ``response`` as the key's answer unless one is kept already; that one, or None."""
    answer = slot.answer(response.status_code, json.loads(bytes(response.body)))
    ttl = store.settings.api.idempotency_ttl
    return cast(str | None, store.redis.set(slot.key, answer, nx=True, ex=ttl, get=True))


def _replay(kept: str, fingerprint: str) -> JSONResponse:
    stored: dict[str, Any] = json.loads(kept)
    if stored.get("fingerprint") != fingerprint:
        return _problem(
            422, "this Idempotency-Key was used with a different request; use a new key"
        )
    return JSONResponse(
        stored["body"], status_code=stored["status"], headers={REPLAYED_HEADER: "true"}
    )


def fingerprint(method: str, path: str, body: Any) -> str:
    payload = body.model_dump_json() if hasattr(body, "model_dump_json") else json.dumps(body)
    return hashlib.sha256(f"{method} {path} {payload}".encode()).hexdigest()
