"""Listing a tenant's runs, newest first, filtered, a page at a time (``GET /v1/runs``).

The scripts that make a run's transitions keep sorted sets of the tenant's runs by creation
time (:func:`agentfleet.tasks.keys.tenant_runs`): all of them and, per agent, thread and
metadata pair, when the run is accepted; per final status and error code when it ends. A
query walks the most selective index its filters name, newest first, and checks the other
filters on each run's record; it examines at most :data:`MAX_EXAMINED` runs per page, so a
page may come back short with a cursor to go on from. Indexes are trimmed to the run lifetime
as they are written, and runs whose record expired are dropped from them as they are met.

A cursor is the creation time and ID of the last run examined: the next page starts after it,
so runs created meanwhile never shift a page. Runs that finish meanwhile do not either: every
index scores a run by its creation time, which never changes, so a run keeps its place in the
walk whatever its status becomes (``tests/test_runlist.py`` pages through a thousand runs while
they finish). A filter is checked on each run as its page is read: a run that stops matching
before its page is read is not listed, and one that comes to match is.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from agentfleet.tasks import keys
from agentfleet.tasks.errors import InvalidRequest
from agentfleet.tasks.records import RunRecord
from agentfleet.tasks.states import RunStatus

#: Runs a page examines at most, matching or not.
MAX_EXAMINED = 2000
#: Runs read from an index per round trip.
CHUNK = 200


@dataclass(frozen=True)
class RunQuery:
    """What ``GET /v1/runs`` filters on; each field unset matches every run."""

    status: RunStatus | None = None
    agent: str | None = None
    thread_id: str | None = None
    error_code: str | None = None
    #: Metadata pairs the run must carry, all of them.
    metadata: Sequence[tuple[str, str]] = ()
    #: Unix times: created at or after, before.
    created_after: float | None = None
    created_before: float | None = None

    def index(self, p: str, tenant: str) -> str:
        """The most selective index the filters name."""
        if self.error_code is not None:
            return keys.tenant_runs(p, tenant, "error", self.error_code)
        if self.metadata:
            key, value = self.metadata[0]
            return keys.tenant_runs(p, tenant, "meta", f"{key}={value}")
        if self.thread_id is not None:
            return keys.tenant_runs(p, tenant, "thread", self.thread_id)
        if self.agent is not None:
            return keys.tenant_runs(p, tenant, "agent", self.agent)
        # Final runs never leave their status index; a run that waited for a person stays in
        # the waiting one after it went on, and matches() leaves it out.
        if self.status is not None and (self.status.terminal or self.status is RunStatus.WAITING):
            return keys.tenant_runs(p, tenant, "status", self.status.value)
        return keys.tenant_runs(p, tenant)

    def matches(self, run: RunRecord) -> bool:
        if self.status is not None and run.status is not self.status:
            return False
        if self.agent is not None and run.agent != self.agent:
            return False
        if self.thread_id is not None and run.thread_id != self.thread_id:
            return False
        if self.error_code is not None and _error_code(run) != self.error_code:
            return False
        metadata = json.loads(run.fields.get("metadata") or "{}")
        return all(metadata.get(k) == v for k, v in self.metadata)


def _error_code(run: RunRecord) -> str | None:
    error = run.fields.get("error")
    return str(json.loads(error).get("code")) if error else None


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the creation time and ID of the last run it examined."""

    created: float
    run_id: str

    def encode(self) -> str:
        raw = json.dumps([self.created, self.run_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            padded = text + "=" * (-len(text) % 4)
            created, run_id = json.loads(base64.urlsafe_b64decode(padded))
            return cls(float(created), str(run_id))
        except (ValueError, TypeError) as exc:
            raise InvalidRequest.of([("cursor", f"not a cursor of this API ({exc})")]) from None


@dataclass
class Page:
    """The runs of one page, newest first, and the cursor of the next (None: no more)."""

    runs: list[RunRecord] = field(default_factory=list)
    cursor: Cursor | None = None


def list_runs(
    client: redis.Redis,
    prefix: str,
    tenant: str,
    query: RunQuery,
    limit: int,
    after: Cursor | None = None,
) -> Page:
    """Up to ``limit`` runs of ``tenant`` matching ``query``, newest first, after ``after``."""
    index = query.index(prefix, tenant)
    high: float | str = "+inf" if query.created_before is None else f"({query.created_before}"
    if after is not None:
        high = after.created
    low: float | str = "-inf" if query.created_after is None else query.created_after
    page, examined, skip_ties = Page(), 0, after
    last: Cursor | None = None
    while examined < MAX_EXAMINED:
        chunk: list[tuple[str, float]] = client.zrevrangebyscore(  # type: ignore[assignment]
            index, high, low, start=0, num=CHUNK, withscores=True
        )
        if skip_ties is not None:
            # Ties of the cursor's time come in reverse ID order: drop those up to its run.
            chunk = [(i, s) for i, s in chunk if s < skip_ties.created or i < skip_ties.run_id]
        if not chunk:
            return page
        records = _records(client, prefix, [i for i, _ in chunk])
        gone = []
        for (run_id, created), run in zip(chunk, records, strict=True):
            examined += 1
            if run is None:
                gone.append(run_id)
            elif query.matches(run):
                page.runs.append(run)
            last = Cursor(created, run_id)
            if len(page.runs) >= limit or examined >= MAX_EXAMINED:
                page.cursor = last
                break
        if gone:
            client.zrem(index, *gone)
        if page.cursor is not None or last is None:
            return page
        skip_ties, high = last, last.created
    page.cursor = last
    return page


def _records(client: redis.Redis, prefix: str, ids: list[str]) -> list[RunRecord | None]:
    pipe = client.pipeline(transaction=False)
    for run_id in ids:
        pipe.hgetall(keys.run(prefix, run_id))
    found: list[Any] = pipe.execute()
    return [RunRecord.parse(f) if f else None for f in found]
