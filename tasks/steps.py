"""A run step by step (``GET /v1/runs/{id}/steps``): what each step sent and got back, its tool
calls, its usage and timing, made from what the run already keeps.

- The transcript is cut into steps where each step's answer is: an assistant message that is
  not sent back for repair (a typed run's invalid answer is followed by a user message named
  ``output_repair``, and belongs to the same step). What comes before a step's answer since the
  previous one is its input: the system prompt, the thread's history and the user's input for
  step 1; the tool results of the step before for the others.
- The events give the rest: when the step's LLM call began and its answer was stored
  (``llm_call_started``, once per attempt, ``llm_call_finished``: provider, model, worker,
  tokens, cost, cache hits), its retries (``llm_retry``: the error, the attempt, the
  countdown) and waits (``llm_wait``: every provider held, or the tenant's budget spent; an
  event without a step, of the step whose call began last), what the context budget left out
  (``context_trimmed``), and each tool call's times.
- The tool calls' records give their arguments and results.

Secrets are not shown: message contents, tool arguments and tool outputs pass through
:func:`agentfleet.tasks.redaction.redact`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, cast

from agentfleet.tasks import keys
from agentfleet.tasks.records import RunRecord
from agentfleet.tasks.redaction import Redactor
from agentfleet.tasks.store import RunStore

#: Events a step's view reads (the rest are the run's, or tokens).
_STEP_EVENTS = frozenset(
    {
        "llm_call_started",
        "llm_call_finished",
        "context_trimmed",
        "llm_retry",
        "llm_wait",
        "tool_call_started",
        "tool_call_finished",
        "step_finished",
    }
)


def _iso(ms: float | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _split(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The transcript as steps: each one's input, repair rounds and answer."""
    steps: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    repairs: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        following = messages[index + 1] if index + 1 < len(messages) else {}
        if (
            message.get("role") == "assistant" and following.get("name") == "output_repair"
        ) or message.get("name") == "output_repair":
            repairs.append(message)
        elif message.get("role") == "assistant":
            steps.append({"input": pending, "repairs": repairs, "output": message})
            pending, repairs = [], []
        else:
            pending.append(message)
    if pending or repairs:
        steps.append({"input": pending, "repairs": repairs, "output": None})
    return steps


def _events(store: RunStore, run_id: str) -> dict[int, list[tuple[float, str, dict[str, Any]]]]:
    """The run's step events by step: (ms, type, data)."""
    by_step: dict[int, list[tuple[float, str, dict[str, Any]]]] = defaultdict(list)
    stream = keys.run_events(store.settings.redis.key_prefix, run_id)
    found = cast(list[tuple[str, dict[str, str]]], store.redis.xrange(stream))
    current = 0  # the step whose LLM call began last: the one a wait belongs to
    for event_id, fields in found:
        kind = fields.get("type", "")
        if kind not in _STEP_EVENTS:
            continue
        data = json.loads(fields.get("data") or "{}")
        step = int(data.get("step") or _step_of_call(str(data.get("id", ""))) or 0)
        if kind == "llm_call_started":
            current = step
        elif kind == "llm_wait":
            step = current
        if step:
            by_step[step].append((float(event_id.split("-")[0]), kind, data))
    return by_step


def _step_of_call(call_id: str) -> int | None:
    """The step of a run's tool call ``<run>-<step>-<index>``."""
    parts = call_id.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def run_steps(store: RunStore, run: RunRecord, redactor: Redactor) -> dict[str, Any]:
    """The view ``GET /v1/runs/{id}/steps`` answers for ``run``: for a run whose transcript
    does not outlive it (``transcript: not_kept``), its steps from their events alone, with no
    message and no tool call's arguments or output, whether or not the run has ended."""
    events = _events(store, run.id)
    if run.keeps_transcript:
        raw = store.redis.lrange(keys.run_messages(store.settings.redis.key_prefix, run.id), 0, -1)
        parts = _split([json.loads(m) for m in cast(list[str], raw)])
    else:
        count = max([run.step, *events])
        parts = [{"input": [], "repairs": [], "output": None} for _ in range(count)]
    steps = []
    for number, part in enumerate(parts, start=1):
        steps.append(_step(store, run, number, part, events.get(number, []), redactor))
    transcript = "kept" if run.keeps_transcript else "not_kept"
    return {"run_id": run.id, "status": run.status.value, "transcript": transcript, "steps": steps}


def _step(
    store: RunStore,
    run: RunRecord,
    number: int,
    part: dict[str, Any],
    events: list[tuple[float, str, dict[str, Any]]],
    redactor: Redactor,
) -> dict[str, Any]:
    starts = [t for t, kind, _ in events if kind == "llm_call_started"]
    done = next(((t, d) for t, kind, d in events if kind == "llm_call_finished"), None)
    finished, answer = done if done else (None, {})
    began = starts[0] if starts else None
    # The answered call began at the last attempt before its answer; the first attempt
    # began the step, retries and waits included.
    answered = max((t for t in starts if finished is None or t <= finished), default=None)
    context = next((d for _, kind, d in events if kind == "context_trimmed"), None)
    calls = _tool_calls(store, run, number, events, redactor)
    return {
        "step": number,
        "provider": answer.get("provider"),
        "model": answer.get("model"),
        "worker": answer.get("worker"),
        "started_at": _iso(began),
        "finished_at": _iso(finished),
        "latency_ms": round(finished - answered) if answered and finished else None,
        "attempts": len(starts),
        **_retries_and_waits(events, starts, redactor),
        "usage": {
            "prompt_tokens": answer.get("prompt_tokens", 0),
            "completion_tokens": answer.get("completion_tokens", 0),
            "cached_tokens": answer.get("cached_tokens", 0),
            "cost": answer.get("cost", 0),
            "cache_hits": answer.get("cache_hits", 0),
        },
        "input": [redactor.message(m) for m in part["input"]],
        "repairs": [redactor.message(m) for m in part["repairs"]],
        "output": redactor.message(part["output"]) if part["output"] else None,
        "context": {k: v for k, v in context.items() if k != "step"} if context else None,
        "tool_calls": calls,
        "deliveries": int(run.fields.get(keys.deliveries_field(number)) or 0),
    }


def _tool_calls(
    store: RunStore,
    run: RunRecord,
    step: int,
    events: list[tuple[float, str, dict[str, Any]]],
    redactor: Redactor,
) -> list[dict[str, Any]]:
    started = {d.get("id"): t for t, kind, d in events if kind == "tool_call_started"}
    ended = {d.get("id"): t for t, kind, d in events if kind == "tool_call_finished"}
    call_ids = [keys.tool_call_id(run.id, step, i) for i in range(run.tool_calls(step))]
    found = []
    for call_id, record in zip(call_ids, store.get_tool_calls(call_ids), strict=True):
        result = (record.result if record else None) or {}
        if not run.keeps_transcript:
            error = result.get("error")
            result = {"ok": result.get("ok")}
            if isinstance(error, dict):
                result["error"] = {"code": error.get("code"), "message": "not kept"}
        begin, end = started.get(call_id), ended.get(call_id)
        found.append(
            {
                "id": call_id,
                "name": record.name if record else None,
                "arguments": redactor.value(record.arguments)
                if record and run.keeps_transcript
                else None,
                "status": record.status.value if record else "queued",
                "ok": result.get("ok"),
                "output": redactor.value(result.get("output")),
                "error": result.get("error"),
                "cached": bool(result.get("cached")),
                "started_at": _iso(begin),
                "finished_at": _iso(end),
                "latency_ms": round(end - begin) if begin and end else None,
            }
        )
    return found


def _retries_and_waits(
    events: list[tuple[float, str, dict[str, Any]]], starts: list[float], redactor: Redactor
) -> dict[str, list[dict[str, Any]]]:
    """The step's failed attempts (each from its start to its error) and its waits."""
    retries, waits = [], []
    for t, kind, data in events:
        if kind == "llm_retry":
            retries.append(
                {
                    "attempt": data.get("attempt"),
                    "started_at": _iso(max((b for b in starts if b <= t), default=None)),
                    "failed_at": _iso(t),
                    "error": redactor.text(str(data.get("error") or "")),
                    "countdown_s": data.get("countdown_s"),
                }
            )
        elif kind == "llm_wait":
            waits.append(
                {"at": _iso(t), **{k: data.get(k) for k in ("reason", "detail", "retry_at")}}
            )
    return {"retries": retries, "waits": waits}
