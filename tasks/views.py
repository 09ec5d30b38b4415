"""Public shapes of run and tool-call records: what the API serves and what tasks return."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from agentfleet.tasks.records import RunRecord
from agentfleet.tasks.states import RunStatus


def _typed_result(run: RunRecord, text: str | None) -> Any:
    """A typed run's result: its answer as JSON once it succeeded (only a valid one does)."""
    return json.loads(text) if text and run.status is RunStatus.SUCCEEDED else None


def iso(value: str | None) -> str | None:
    if not value:
        return None
    return datetime.fromtimestamp(float(value), UTC).isoformat(timespec="milliseconds")


def run_view(run: RunRecord) -> dict[str, Any]:
    """A run record as callers see it (``GET /v1/runs/{id}`` and the run's Celery result)."""
    record, usage = run.fields, run.usage
    error = record.get("error")
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
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "llm_calls": usage.llm_calls,
            "cached_tokens": usage.cached_tokens,
            "cost": round(usage.cost, 9),
        },
        "provider": record.get("provider"),
        "worker": record.get("worker"),
        "waiting": json.loads(record["waiting"]) if record.get("waiting") else None,
        # A typed run's result is the JSON value of its answer, and its text is kept beside
        # it (also the text of an answer that never matched the schema).
        "result": _typed_result(run, text) if typed else text,
        "result_text": text if typed else None,
        "error": json.loads(error) if error else None,
        "metadata": json.loads(record.get("metadata") or "{}"),
        "created_at": iso(record.get("created_at")),
        "started_at": iso(record.get("started_at")),
        "finished_at": iso(record.get("finished_at")),
    }


def tool_call_view(record: dict[str, str], public_id: str | None = None) -> dict[str, Any]:
    """A tool-call record as callers see it (``GET /v1/tool-calls/{id}``).

    ``public_id`` is the ID the caller knows the call by, which the view and its result
    carry (default: the stored ID; a caller's own ID is stored inside its tenant's namespace).
    """
    ident = public_id or record["id"]
    result = json.loads(record["result"]) if record.get("result") else None
    if result is not None:
        result["id"] = ident
        result.pop("gen", None)  # the run store's bookkeeping (agentfleet.tasks.scripts)
    return {
        "id": ident,
        "name": record.get("name"),
        "status": record.get("status", "queued"),
        "run_id": record.get("run_id"),
        "arguments": json.loads(record["arguments"]) if record.get("arguments") else None,
        "result": result,
        "created_at": iso(record.get("created_at")),
        "started_at": iso(record.get("started_at")),
        "finished_at": iso(record.get("finished_at")),
    }
