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
    names.CALLBACK: ("kind", "ident"),
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
