"""What the arguments of each agentfleet task are, by name, and which run a task belongs to.

Tasks take positional arguments (a chord body gets its header's results prepended), so a
message's ``args`` mean nothing without the parameter names. Log lines and Flower's argument
reprs both need them; this table is the one place that knows them, and a test checks it
against the registered tasks' signatures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from agentfleet.tasks import names

#: Parameter names of every task, in call order (``self`` of bound tasks left out).
PARAMS: Final[Mapping[str, tuple[str, ...]]] = {
    names.RUN: ("request",),
    names.AGENT_STEP: ("tool_results", "run_id", "step"),
    names.RESUME: ("run_id", "step", "body"),
    names.TOOLS_FAILED: ("run_id",),
    names.TOOL_CALL: ("request", "payload"),
    names.BATCH_DISPATCH: ("batch_id",),
    names.BATCH_COLLECT: ("results", "batch_id"),
    names.CALLBACK: ("kind", "ident", "status"),
}

#: Every public task name shares this prefix; a name with it but missing above is ours too.
PREFIX: Final = "agentfleet."


def is_ours(name: str | None) -> bool:
    return bool(name) and str(name).startswith(PREFIX)


def bind(name: str, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The call's arguments by parameter name; unknown positions become ``arg<i>``."""
    params = PARAMS.get(name, ())
    bound = {
        (params[i] if i < len(params) else f"arg{i}"): value for i, value in enumerate(args or ())
    }
    bound.update(kwargs or {})
    return bound


def run_id_of(
    name: str | None,
    task_id: str | None,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
) -> str | None:
    """The run a task works for: the run entry task's own ID, else its ``run_id`` argument.

    A tool call carries ``run_id`` in its payload when a run dispatched it; a tool call sent
    on its own (``POST /v1/tool-calls``) belongs to no run.
    """
    if not name or not is_ours(name):
        return None
    if name == names.RUN:
        return task_id
    bound = bind(name, args, kwargs)
    value = bound.get("run_id")
    payload = bound.get("request") or bound.get("payload")
    if value is None and isinstance(payload, Mapping):
        value = payload.get("run_id")
    return value if isinstance(value, str) and value else None


def span_of(
    name: str, task_id: str | None, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """The name and attributes of the span of our task ``name`` (docs/operations.md,
    "Tracing"): every one names its run (if any) and its task; a step its number; a tool call
    is a GenAI ``execute_tool`` span."""
    attributes: dict[str, Any] = {"celery.task_name": name, "messaging.message.id": task_id or ""}
    run_id = run_id_of(name, task_id, args, kwargs)
    if run_id:
        attributes["agentfleet.run_id"] = run_id
    bound = bind(name, args, kwargs)
    if name == names.RUN:
        attributes["agentfleet.step"] = 1
    elif name == names.AGENT_STEP and isinstance(bound.get("step"), int):
        attributes["agentfleet.step"] = bound["step"]
    payload = bound.get("request") or bound.get("payload")
    if name != names.TOOL_CALL or not isinstance(payload, Mapping):
        return name, attributes
    tool = str(payload.get("name") or "")
    attributes |= {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": tool,
        "agentfleet.tool_call.id": str(payload.get("id") or ""),
    }
    if payload.get("model_call_id"):
        attributes["gen_ai.tool.call.id"] = str(payload["model_call_id"])
    if isinstance(payload.get("step"), int):
        attributes["agentfleet.step"] = payload["step"]
    # The GenAI conventions' name, which tracing backends show as a tool call.
    return f"execute_tool {tool}", attributes
