"""Public shapes of run and tool-call records: what the API serves and what tasks return."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def iso(value: str | None) -> str | None:
    if not value:
        return None
    return datetime.fromtimestamp(float(value), UTC).isoformat(timespec="milliseconds")


def _int(record: dict[str, str], name: str) -> int:
    return int(float(record.get(name) or 0))


def run_view(record: dict[str, str]) -> dict[str, Any]:
    """A run record as callers see it (``GET /v1/runs/{id}`` and the run's Celery result)."""
    prompt, completion = _int(record, "prompt_tokens"), _int(record, "completion_tokens")
    error = record.get("error")
    return {
        "id": record["id"],
        "status": record["status"],
        "model": record.get("model"),
        "progress": {
            "step": _int(record, "step"),
            "max_steps": _int(record, "max_steps"),
            "tool_calls_done": _int(record, "tools_done"),
            "tool_calls_total": _int(record, "tools_total"),
        },
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "llm_calls": _int(record, "llm_calls"),
        },
        "provider": record.get("provider"),
        "worker": record.get("worker"),
        "waiting": json.loads(record["waiting"]) if record.get("waiting") else None,
        "result": record.get("result"),
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
