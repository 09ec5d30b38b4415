"""What the run explorer's pages show, made from what the API already serves: a run's step
timeline (from its steps, :func:`agentfleet.tasks.steps.run_steps`), a day's spend per agent
(from the run list) and the providers' recent breaker changes (their event stream)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import redis

from agentfleet.tasks import keys, runlist

#: The narrowest bar drawn (percent of the timeline), so a 1 ms tool call stays visible.
MIN_WIDTH = 0.4
#: Runs of a day the usage page reads at most to split its spend per agent.
MAX_DAY_RUNS = 5000
#: Breaker changes the providers page shows.
BREAKER_CHANGES = 20


def _ms(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() * 1000 if iso else None


def duration(ms: float | None) -> str:
    """``340 ms``, ``1.25 s``, ``2 min 5 s``; ``-`` for none."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes} min {seconds} s"


@dataclass(frozen=True)
class Bar:
    """One span on a row: ``kind`` is ``wait``, ``llm``, ``tool`` or ``error``."""

    kind: str
    left: float
    width: float
    title: str


@dataclass
class Row:
    """A row of the timeline: a step's LLM call (with the wait before it) or a tool call."""

    step: int
    kind: str
    label: str
    start_ms: float | None
    duration_ms: float | None
    note: str = ""
    bars: list[Bar] = field(default_factory=list)


@dataclass
class Timeline:
    rows: list[Row]
    #: Milliseconds the timeline spans: from the run's creation to its end (or now).
    total_ms: float


class _Scale:
    def __init__(self, origin: float, end: float) -> None:
        self.origin, self.span = origin, max(end - origin, 1.0)

    def visible(self, start: float, end: float) -> bool:
        """Whether the span is wide enough to draw without overstating it."""
        return (end - start) / self.span * 100 >= MIN_WIDTH

    def bar(self, kind: str, start: float, end: float, title: str) -> Bar:
        left = min(max((start - self.origin) / self.span * 100, 0.0), 100.0)
        width = max((end - start) / self.span * 100, MIN_WIDTH)
        return Bar(kind, round(left, 3), round(min(width, 100.0 - left + MIN_WIDTH), 3), title)


def timeline(run: dict[str, Any], steps: list[dict[str, Any]], now_ms: float) -> Timeline:
    """The run's steps drawn to scale: per step, the wait before its LLM call and the call;
    per tool call, its span. Spans still open end at the run's end, or now while it runs."""
    created = _ms(run.get("created_at"))
    first = next((_ms(s["started_at"]) for s in steps if s.get("started_at")), None)
    origin = created or first or now_ms
    end = _ms(run.get("finished_at")) or now_ms
    scale = _Scale(origin, end)
    rows: list[Row] = []
    ready = origin  # when the step could have begun: the run's creation, the last call's end
    for step in steps:
        number = int(step["step"])
        began, done = _ms(step.get("started_at")), _ms(step.get("finished_at"))
        row = Row(number, "llm", f"Step {number}: LLM call", None, None)
        if step.get("model"):
            row.label += f" ({step.get('provider')}:{step['model']})"
        if began is not None:
            if began > ready:
                waited = duration(began - ready)
                row.note = f"waited {waited} before"
                if scale.visible(ready, began):
                    row.bars.append(scale.bar("wait", ready, began, f"waited {waited}"))
            stop = done if done is not None else end
            row.start_ms, row.duration_ms = began - origin, stop - began
            call = _retries(row, step, began, stop, scale)
            title = f"LLM call, {duration(stop - call)}" + ("" if done else " so far")
            row.bars.append(scale.bar("llm", call, stop, title))
            ready = max(ready, stop)
        rows.append(row)
        for call in step.get("tool_calls") or []:
            rows.append(_tool_row(number, call, origin, end, scale))
            if rows[-1].start_ms is not None and rows[-1].duration_ms is not None:
                ready = max(ready, origin + rows[-1].start_ms + rows[-1].duration_ms)
    return Timeline(rows, end - origin)


def _retries(row: Row, step: dict[str, Any], began: float, stop: float, scale: _Scale) -> float:
    """Draw the step's failed attempts and the waits between them on ``row``; when the call
    that answered (or is in flight) began."""
    retries, waits = step.get("retries") or [], step.get("waits") or []
    if not retries and not waits:
        return began
    call = began
    for retry in retries:
        start, failed = _ms(retry.get("started_at")), _ms(retry.get("failed_at"))
        if start is not None and failed is not None:
            title = f"attempt {retry.get('attempt')} failed: {retry.get('error')}"
            row.bars.append(scale.bar("error", start, failed, title))
            call = max(call, failed)
    latency = step.get("latency_ms")
    answered = stop - latency if step.get("finished_at") and latency is not None else stop
    if answered > call:
        row.bars.append(scale.bar("wait", call, answered, f"held {duration(answered - call)}"))
        call = answered
    counted = [(len(retries), "retry", "retries"), (len(waits), "wait", "waits")]
    notes = [f"{n} {one if n == 1 else many}" for n, one, many in counted if n]
    row.note = "; ".join([row.note, ", ".join(notes)] if row.note else notes)
    return call


def _tool_row(step: int, call: dict[str, Any], origin: float, end: float, scale: _Scale) -> Row:
    row = Row(step, "tool", f"Step {step}: tool {call.get('name') or '?'}", None, None)
    began, done = _ms(call.get("started_at")), _ms(call.get("finished_at"))
    row.note = str(call.get("status") or "")
    if call.get("cached"):
        row.note += " (cached)"
    if began is None:
        return row
    stop = done if done is not None else end
    row.start_ms, row.duration_ms = began - origin, stop - began
    kind = "error" if call.get("ok") is False else "tool"
    title = f"{call.get('name')}, {duration(stop - began)}, {call.get('status')}"
    row.bars.append(scale.bar(kind, began, stop, title))
    return row


@dataclass(frozen=True)
class AgentUsage:
    agent: str
    runs: int
    tokens: int
    cost: float
    llm_calls: int


def usage_by_agent(
    client: redis.Redis, prefix: str, tenant: str, day: str
) -> tuple[list[AgentUsage], bool]:
    """The usage of ``tenant``'s runs created on UTC ``day`` (``YYYY-MM-DD``), summed per
    agent (ad hoc runs as ``""``), and whether every run of the day was read (at most
    :data:`MAX_DAY_RUNS`)."""
    start = datetime.fromisoformat(f"{day}T00:00:00+00:00")
    query = runlist.RunQuery(
        created_after=start.timestamp(), created_before=(start + timedelta(days=1)).timestamp()
    )
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0])
    read, cursor = 0, None
    while read < MAX_DAY_RUNS:
        page = runlist.list_runs(client, prefix, tenant, query, 500, cursor)
        for run in page.runs:
            entry = sums[run.agent or ""]
            entry[0] += 1
            entry[1] += run.usage.total_tokens
            entry[2] += run.usage.cost
            entry[3] += run.usage.llm_calls
        read += len(page.runs)
        cursor = page.cursor
        if cursor is None:
            break
    found = [
        AgentUsage(name, int(s[0]), int(s[1]), round(s[2], 9), int(s[3]))
        for name, s in sums.items()
    ]
    found.sort(key=lambda a: (-a.cost, -a.tokens, a.agent))
    return found, cursor is None


def breaker_changes(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """The providers' latest breaker state changes, newest first."""
    found = cast(
        list[tuple[str, dict[str, str]]],
        client.xrevrange(keys.provider_events(prefix), count=BREAKER_CHANGES),
    )
    changes = []
    for event_id, fields in found:
        at = float(fields.get("at") or int(event_id.split("-")[0]) / 1000)
        changes.append(
            {
                "provider": fields.get("provider", ""),
                "from": fields.get("from", ""),
                "to": fields.get("to", ""),
                "at": at,
                "ago": duration((time.time() - at) * 1000),
            }
        )
    return changes
