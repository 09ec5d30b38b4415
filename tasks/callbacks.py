"""Completion callbacks: the final record of a run or batch, POSTed to its ``callback_url``.

The body is the record as ``GET /v1/runs/{id}`` (or ``/v1/batches/{id}``) shows it. The
``X-Agentfleet-Signature`` header is ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
keyed with ``AGENTFLEET_CALLBACK_SECRET``: the receiver recomputes it (:func:`verify`) and
rejects stale timestamps, so a forged or replayed callback is refused. A receiver that is
down, slow or answers non-2xx is tried again with exponential backoff, up to
``AGENTFLEET_CALLBACK_MAX_ATTEMPTS`` times; the record notes how delivery went.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from typing import Any

import httpx
from celery import Celery, Task

from agentfleet.tasks import names
from agentfleet.tasks.batch import batch_key, batch_record, batch_view
from agentfleet.tasks.records import RunRecord
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.store import get_store
from agentfleet.tasks.views import run_view

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Agentfleet-Signature"
EVENT_HEADER = "X-Agentfleet-Event"
#: Backoff between attempts: 2, 4, 8, ... seconds, at most this.
MAX_BACKOFF = 300.0


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance: float = 300.0) -> bool:
    """Whether ``header`` signs ``body`` with ``secret``, made within ``tolerance`` seconds."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance:
        return False
    expected = sign(secret, body, t).split(",", 1)[1].removeprefix("v1=")
    return hmac.compare_digest(expected, parts.get("v1", ""))


def register(app: Celery, settings: Settings) -> None:
    @app.task(name=names.CALLBACK, bind=True, shared=False, max_retries=None)
    def callback(self: Task, kind: str, ident: str, status: str | None = None) -> dict[str, Any]:
        """POST the final record of run or batch ``ident`` to its callback URL; with
        ``status`` (a run that began waiting for a person), its record only while it has
        that status: a run that moved on meanwhile has its final callback still to come."""
        store = get_store(settings)
        key = store.run_key(ident) if kind == "run" else batch_key(store, ident)
        record = store.get_run(ident) if kind == "run" else batch_record(store, ident)
        if record is None or not record.callback_url or settings.api.callback_secret is None:
            return {"delivered": False, "reason": "no callback URL or no secret"}
        url = record.callback_url
        view = run_view(record) if isinstance(record, RunRecord) else batch_view(store, record)
        if status is not None and view["status"] != status:
            return {"delivered": False, "reason": f"the run is no longer {status}"}
        body = json.dumps(view, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(settings.api.callback_secret.get_secret_value(), body),
            EVENT_HEADER: f"{kind}.{view['status']}",
        }
        attempt = self.request.retries + 1
        try:
            response = httpx.post(
                url, content=body, headers=headers, timeout=settings.api.callback_timeout
            )
            failure = None if response.is_success else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            failure = f"{type(exc).__name__}: {exc}"
        store.redis.hset(
            key, mapping={"callback_attempts": attempt, "callback_status": failure or "delivered"}
        )
        if failure is None:
            return {"delivered": True, "attempts": attempt}
        if attempt >= settings.api.callback_max_attempts:
            log.warning(
                "callback of %s %s gave up after %d attempts: %s", kind, ident, attempt, failure
            )
            return {"delivered": False, "attempts": attempt, "error": failure}
        countdown = min(2.0**attempt, MAX_BACKOFF) * random.uniform(1.0, 1.25)
        log.info("callback of %s %s failed (%s); again in %.1fs", kind, ident, failure, countdown)
        raise self.retry(countdown=countdown)
