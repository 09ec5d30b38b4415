"""``Idempotency-Key`` on POSTs: the same key from the same tenant gets the same answer.

The first request with a key reserves it (``SET NX``) before doing anything, so two requests
racing with one key cannot both create work: the loser waits for the winner's answer and
returns it. Answers are kept ``AGENTFLEET_IDEMPOTENCY_TTL`` seconds. A key sent again with a
different request is a 422, not a silent replay of something else. A request that failed
with a 5xx (nothing was accepted) releases its key, so the caller can retry with it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse

from tasks.store import RunStore

#: Longest a request waits for a concurrent one holding its key.
WAIT_FOR_WINNER = 30.0
MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def run_once(
    store: RunStore,
    tenant: str,
    key: str | None,
    fingerprint: str,
    produce: Callable[[], JSONResponse],
) -> JSONResponse:
    """``produce()`` once per (tenant, key); later calls get its stored answer."""
    if key is None:
        return produce()
    if not key or len(key) > MAX_KEY_LENGTH:
        return _problem(422, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    digest = hashlib.sha256(key.encode()).hexdigest()
    slot = f"{store.settings.key_prefix}:idem:{tenant}:{digest}"
    ttl = store.settings.idempotency_ttl
    pending = json.dumps({"fingerprint": fingerprint})
    if store.redis.set(slot, pending, nx=True, ex=ttl):
        try:
            response = produce()
        except BaseException:
            store.redis.delete(slot)
            raise
        if response.status_code >= 500:
            store.redis.delete(slot)
            return response
        answer = {
            "fingerprint": fingerprint,
            "status": response.status_code,
            "body": json.loads(bytes(response.body)),
        }
        store.redis.set(slot, json.dumps(answer), ex=ttl)
        return response
    return _replay(store, slot, fingerprint)


def _replay(store: RunStore, slot: str, fingerprint: str) -> JSONResponse:
    deadline = time.monotonic() + WAIT_FOR_WINNER
    while True:
        raw = store.redis.get(slot)
        stored: dict[str, Any] = json.loads(raw) if raw else {}
        if stored and stored.get("fingerprint") != fingerprint:
            return _problem(
                422, "this Idempotency-Key was used with a different request; use a new key"
            )
        if "status" in stored:
            return JSONResponse(
                stored["body"], status_code=stored["status"], headers={REPLAYED_HEADER: "true"}
            )
        if not stored or time.monotonic() > deadline:
            # The first request failed and released the key, or is stuck: ask for a retry.
            return _problem(409, "a request with this Idempotency-Key is in progress; retry")
        time.sleep(0.02)


def fingerprint(method: str, path: str, body: Any) -> str:
    payload = body.model_dump_json() if hasattr(body, "model_dump_json") else json.dumps(body)
    return hashlib.sha256(f"{method} {path} {payload}".encode()).hexdigest()
