"""Sub-agents as child runs.

A run may call other agents like tools (its ``subagents``, by default its agent's). Each such
call of a step's answer is a child run of that agent: its ID is the call's ID
(``<parent>-<step>-<index>``), its record names its ``parent_id``, ``root_id`` and ``depth``,
and its entry message is a member of the parent's fan-out, beside the ordinary tool calls. So
the parent's next step starts when every tool call and child of the step is final, and no
worker waits meanwhile: the parent's step ended when it published its fan-out. A child takes
no tenant slot, and the parent frees its own while the step's children run (its next step takes
one again), so a tenant's cap can never deadlock a tree, nor does a tree waiting on its
children keep its tenant's other runs waiting.

A child's end is its parent's tool result. The task that ends the child stores it as the
result of the parent's call (:func:`report`) and returns it, so the parent's chord gets it
like any tool result: ``{"ok": true, "output": ...}`` (the child's typed result when its agent
has an output type, else its text), or ``{"ok": false, "error": ...}`` for a child that failed
or was cancelled: the parent's model sees the error and decides. A call that would pass the
tree's limits (depth, children per step, runs per tree) or whose input the sub-agent refuses
never starts a run: its error result is stored at once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, cast

from celery import Celery

from agentfleet.tasks import keys
from agentfleet.tasks.agents import Agent
from agentfleet.tasks.agents import registry as agents
from agentfleet.tasks.errors import InvalidRequest
from agentfleet.tasks.intake import admit_run
from agentfleet.tasks.lifecycle import follow_up
from agentfleet.tasks.llm import ModelToolCall
from agentfleet.tasks.models import RunRequest
from agentfleet.tasks.records import RunRecord, Usage
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.states import RunStatus, ToolCallStatus
from agentfleet.tasks.store import RunStore

log = logging.getLogger(__name__)

#: The arguments of a sub-agent without an input type: what to ask it.
_TEXT_INPUT = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "What to ask the agent."}},
    "required": ["input"],
    "additionalProperties": False,
}


def subagent_schema(agent: Agent) -> dict[str, Any]:
    """The ``tools=[...]`` entry through which a model calls ``agent``."""
    parameters = agent.input_schema if agent.input_type is not None else _TEXT_INPUT
    description = agent.description or f"Ask the {agent.name} agent; it answers with a result."
    return {
        "type": "function",
        "function": {"name": agent.name, "description": description, "parameters": parameters},
    }


def schemas(run: RunRecord) -> list[dict[str, Any]]:
    """The tool entries of the sub-agents ``run`` may call (those this process has)."""
    return [subagent_schema(agents.get(name)) for name in run.subagents if name in agents]


def _child_input(agent: Agent, arguments: str) -> str | dict[str, Any]:
    """The child run's input from the model's arguments; :class:`InvalidRequest` if none."""
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidRequest.of([("arguments", f"not JSON: {exc.msg}")]) from None
    if agent.input_type is not None:
        if not isinstance(value, dict):
            raise InvalidRequest.of([("arguments", "must be a JSON object")])
        return value
    if isinstance(value, dict) and isinstance(value.get("input"), str) and value["input"].strip():
        return str(value["input"])
    raise InvalidRequest.of([("input", "a text of what to ask the agent is required")])


def _head(call_id: str, call: ModelToolCall, gen: str | None) -> dict[str, Any]:
    """The fields every result of the call starts with (as a tool call's: toolcall.py)."""
    head: dict[str, Any] = {"id": call_id, "name": call.name, "model_call_id": call.id}
    if gen:
        head["gen"] = gen
    return head


def _refused(head: dict[str, Any], code: str, message: str) -> dict[str, Any]:
    return head | {"ok": False, "error": {"code": code, "message": message}}


@dataclass(frozen=True)
class Spawn:
    """What became of a step's sub-agent calls: the indexes whose child run is written (its
    entry goes into the fan-out), and the error results stored for the others."""

    started: list[int]
    refused: dict[int, dict[str, Any]]


def start_children(
    store: RunStore,
    settings: Settings,
    run: RunRecord,
    step: int,
    calls: list[ModelToolCall],
    gen: str | None,
) -> Spawn:
    """Write the child runs of the sub-agent calls among ``calls`` (the answer of ``step``,
    generation ``gen``), within the tree's limits. Idempotent: a step delivered again finds
    its children written and writes nothing twice."""
    indexes = [i for i, c in enumerate(calls) if c.name in run.subagents]
    started: list[int] = []
    refused: dict[int, dict[str, Any]] = {}
    written: list[tuple[str, RunRequest, list[str], list[Any]]] = []
    extra: list[dict[str, Any]] = []
    in_tree = int(store.redis.hget(store.run_key(run.root_id), "tree_runs") or 0)
    for position, index in enumerate(indexes):
        call, call_id = calls[index], keys.tool_call_id(run.id, step, index)
        head = _head(call_id, call, gen)
        if store.redis.exists(store.run_key(call_id)):
            started.append(index)  # written by an earlier delivery of this step
            continue
        problem = _limit_problem(settings, run, position, in_tree + len(written))
        if problem is None and call.name not in agents:
            problem = f"this worker has no agent {call.name!r}"
        if problem is not None:
            refused[index] = _refused(head, "subagent_refused", problem)
            continue
        agent = agents.get(call.name)
        try:
            request = {"agent": agent.name, "input": _child_input(agent, call.arguments)}
            admitted = admit_run(request, settings, check_callback=False)
        except InvalidRequest as exc:
            detail = "; ".join(f"{field}: {text}" for field, text in exc.problems)
            refused[index] = _refused(head, "subagent_refused", f"invalid call: {detail}")
            continue
        written.append(
            (call_id, admitted.prepared(call_id, run.tenant), admitted.tools(), admitted.chain)
        )
        extra.append(
            {
                "parent_id": run.id,
                "root_id": run.root_id,
                "depth": run.depth + 1,
                "parent_step": step,
                "parent_call": json.dumps(head),
                # A child never waits for a tenant slot: it runs while its parent waits.
                "cap": 0,
            }
        )
        started.append(index)
    if written:
        store.create_runs(written, tenant=run.tenant, extra=extra)
        _link(store, run, step, calls, written)
    for result in refused.values():
        store.complete_tool(result["id"], "", result, run.id, step, status=ToolCallStatus.FAILED)
    return Spawn(started, refused)


def _limit_problem(settings: Settings, run: RunRecord, position: int, in_tree: int) -> str | None:
    if run.depth + 1 > settings.runs.children_max_depth:
        return f"sub-agent runs may nest {settings.runs.children_max_depth} levels deep"
    if position >= settings.runs.children_max_per_step:
        return f"a step may start {settings.runs.children_max_per_step} sub-agent runs"
    if in_tree >= settings.runs.children_max_per_tree:
        return f"a run may have {settings.runs.children_max_per_tree} sub-agent runs below it"
    return None


def _link(
    store: RunStore,
    run: RunRecord,
    step: int,
    calls: list[ModelToolCall],
    written: list[tuple[str, RunRequest, list[str], list[Any]]],
) -> None:
    """Record the children on their parent, their tree and their calls' records."""
    p, ttl = store.settings.redis.key_prefix, store.settings.retention.run_ttl
    children = keys.run_children(p, run.id)
    pipe = store.redis.pipeline(transaction=False)
    for child_id, request, _, _ in written:
        index = int(child_id.rsplit("-", 1)[1])
        pipe.sadd(children, child_id)
        pipe.hset(
            store.tool_key(child_id),
            mapping={
                "id": child_id,
                "name": str(request.agent),
                "arguments": calls[index].arguments,
                "run_id": run.id,
                "child_run_id": child_id,
                "status": ToolCallStatus.RUNNING.value,
            },
        )
        pipe.expire(store.tool_key(child_id), ttl)
    pipe.expire(children, ttl)
    pipe.hincrby(store.run_key(run.root_id), "tree_runs", len(written))
    pipe.execute()
    for child_id, request, _, _ in written:
        store.event(
            run.id, "child_run_created", {"id": child_id, "agent": request.agent, "step": step}
        )


def child_result(record: RunRecord) -> dict[str, Any]:
    """What child run ``record``'s end gives its parent's model, as a tool result."""
    head: dict[str, Any] = json.loads(record.fields["parent_call"])
    text = record.fields.get("result")
    if record.status is RunStatus.SUCCEEDED:
        output: Any = text
        if record.output_schema is not None and text:
            output = json.loads(text)
        return head | {"ok": True, "output": output, "run_id": record.id}
    error = json.loads(record.fields.get("error") or "{}")
    code = str(error.get("code") or record.status.value)
    message = f"the {record.agent} run {record.status.value}: {error.get('message') or code}"
    return head | {"ok": False, "error": {"code": code, "message": message}, "run_id": record.id}


def report(store: RunStore, record: RunRecord) -> dict[str, Any]:
    """Store the end of child run ``record`` as its parent's tool result (the first stored
    wins); the result, as the task that ended the child returns it to the parent's fan-out."""
    result = child_result(record)
    status = ToolCallStatus.SUCCEEDED if result["ok"] else ToolCallStatus.FAILED
    step = int(record.fields.get("parent_step") or 0)
    stored, _ = store.complete_tool(record.id, "", result, record.parent_id, step, status=status)
    return stored or result


def children_of(store: RunStore, run_id: str) -> list[str]:
    """The IDs of a run's child runs."""
    found = store.redis.smembers(keys.run_children(store.settings.redis.key_prefix, run_id))
    return sorted(cast(set[str], found))


def descendants(store: RunStore, run_id: str) -> list[RunRecord]:
    """Every run below ``run_id``, level by level."""
    found: list[RunRecord] = []
    level = children_of(store, run_id)
    while level:
        pipe = store.redis.pipeline(transaction=False)
        for child in level:
            pipe.hgetall(store.run_key(child))
        records = [RunRecord.parse(f) for f in pipe.execute() if f]
        found += records
        level = [c for r in records for c in children_of(store, r.id)]
    return found


def tree_usage(run: RunRecord, below: list[RunRecord]) -> Usage:
    """What ``run`` and the runs ``below`` it spent together."""
    every = [run.usage, *(r.usage for r in below)]
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in every),
        completion_tokens=sum(u.completion_tokens for u in every),
        llm_calls=sum(u.llm_calls for u in every),
        cached_tokens=sum(u.cached_tokens for u in every),
        cost=sum(u.cost for u in every),
        cache_hits=sum(u.cache_hits for u in every),
    )


def cancel_descendants(app: Celery, store: RunStore, run_id: str, reason: str) -> int:
    """Cancel every unfinished run below ``run_id``; how many were cancelled."""
    cancelled = 0
    level = children_of(store, run_id)
    while level:
        for child, (outcome, finished) in zip(level, store.cancel_runs(level, reason), strict=True):
            if outcome == "cancelled":
                cancelled += 1
            if finished is not None:
                follow_up(app, store, child, finished)
        level = [c for child in level for c in children_of(store, child)]
    return cancelled
