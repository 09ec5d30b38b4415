"""Public shapes of run and tool-call records: what the API serves and what tasks return."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from agentfleet.tasks.records import RunRecord, ToolCallRecord, Usage
from agentfleet.tasks.states import RunStatus


def _typed_result(run: RunRecord, text: str | None) -> Any:
    """A typed run's result: its answer as JSON once it succeeded (only a valid one does)."""
    return json.loads(text) if text and run.status is RunStatus.SUCCEEDED else None


def iso(value: str | float | None) -> str | None:
    """A Unix time (as stored, or parsed) in ISO 8601 with milliseconds; None for none."""
    if value is None or value == "":
        return None
    return datetime.fromtimestamp(float(value), UTC).isoformat(timespec="milliseconds")


def run_error(run: RunRecord) -> Any:
    """The structured error a run ended with (None if none)."""
    error = run.fields.get("error")
    return json.loads(error) if error else None


def usage_view(usage: Usage) -> dict[str, Any]:
    """What runs spent, as the API shows it."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "llm_calls": usage.llm_calls,
        "cached_tokens": usage.cached_tokens,
        "cost": round(usage.cost, 9),
        "cache_hits": usage.cache_hits,
    }


def _waiting(run: RunRecord) -> dict[str, Any] | None:
    """What the run waits for; a call a person already decided shows the decision."""
    raw = run.fields.get("waiting")
    if not raw:
        return None
    waiting: dict[str, Any] = json.loads(raw)
    if decisions := run.decisions:
        for call in waiting.get("pending", []):
            if decided := decisions.get(call["id"]):
                call["decision"] = decided.get("decision")
    return waiting


def run_view(run: RunRecord) -> dict[str, Any]:
    """A run record as callers see it (``GET /v1/runs/{id}`` and the run's Celery result)."""
    record, usage = run.fields, run.usage
    text = record.get("result")
    typed = run.output_schema is not None
    return {
        "id": run.id,
        "status": run.status.value,
        "agent": run.agent or None,
        "thread_id": run.thread_id or None,
        "model": record.get("model"),
        "progress": {
            "step": run.step,
            "max_steps": run.max_steps,
            "tool_calls_done": run.tools_done,
            "tool_calls_total": run.tools_total,
        },
        "usage": usage_view(usage),
        "provider": record.get("provider"),
        "worker": record.get("worker"),
        "waiting": _waiting(run),
        # A typed run's result is the JSON value of its answer, and its text is kept beside
        # it (also the text of an answer that never matched the schema).
        "result": _typed_result(run, text) if typed else text,
        "result_text": text if typed else None,
        "error": run_error(run),
        "metadata": json.loads(record.get("metadata") or "{}"),
        # A child run (a sub-agent call) names its parent and the top of its tree.
        "parent_id": run.parent_id or None,
        "root_id": run.root_id,
        "depth": run.depth,
        # GET /v1/runs/{id} fills these in for a run with sub-agent runs (tasks/children.py).
        "children": None,
        "tree_usage": None,
        "created_at": iso(record.get("created_at")),
        "started_at": iso(record.get("started_at")),
        "finished_at": iso(record.get("finished_at")),
    }


def tool_call_view(call: ToolCallRecord, public_id: str | None = None) -> dict[str, Any]:
    """A tool call as callers see it (``GET /v1/tool-calls/{id}``).

    ``public_id`` is the ID the caller knows the call by, which the view and its result
    carry (default: the stored ID; a caller's own ID is stored inside its tenant's namespace).
    """
    ident = public_id or call.id
    result = None
    if call.result is not None:
        result = call.result | {"id": ident}  # a copy: the record stays as stored
        result.pop("gen", None)  # the run store's bookkeeping (agentfleet.tasks.scripts)
    return {
        "id": ident,
        "name": call.name or None,
        "status": call.status.value,
        "run_id": call.run_id or None,
        "arguments": call.arguments,
        "result": result,
        "created_at": iso(call.created_at),
        "started_at": iso(call.started_at),
        "finished_at": iso(call.finished_at),
    }
