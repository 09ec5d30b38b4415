"""Handoffs: a run's agent hands the conversation over to another agent.

An agent's ``handoffs`` are tools to its model, ``transfer_to_<agent>`` each. When the model
calls one, the step that dispatches the answer's tool calls makes the run the other agent's:
its record takes that agent's name, tools, sub-agents, handoffs and output type, and the next
step puts the agent's instructions in the transcript (a system message after the tool results)
before it calls the model. The transcript is kept whole: the new agent sees the conversation.
The call's result (``handed over to <agent>``) is stored at once, as a tool task would store
it, so its task hands it over without running anything; the run's events have ``handoff``.
Only an answer's first handoff counts; another in the same answer gets an error result.
"""

from __future__ import annotations

import json
from typing import Any

from agentfleet.tasks import keys
from agentfleet.tasks.agents import Agent, RunContext
from agentfleet.tasks.agents import registry as agents
from agentfleet.tasks.llm import ModelToolCall
from agentfleet.tasks.records import RunRecord
from agentfleet.tasks.states import ToolCallStatus
from agentfleet.tasks.store import RunStore

PREFIX = "transfer_to_"


def tool_name(agent: str) -> str:
    return f"{PREFIX}{agent}"


def schemas(run: RunRecord) -> list[dict[str, Any]]:
    """The ``transfer_to_<agent>`` tool entries of ``run``'s handoffs (those this process has)."""
    found = []
    for name in run.handoffs:
        if name not in agents:
            continue
        agent = agents.get(name)
        found.append(
            {
                "type": "function",
                "function": {
                    "name": tool_name(name),
                    "description": f"Hand the conversation over to {name}"
                    + (f": {agent.description}" if agent.description else "."),
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        )
    return found


def _instructions(agent: Agent, run: RunRecord) -> str:
    metadata = json.loads(run.fields.get("metadata") or "{}")
    return agent.instructions_for(RunContext(run.id, run.tenant, agent.name, "", metadata))


def take(
    store: RunStore, run: RunRecord, step: int, calls: list[ModelToolCall], gen: str | None
) -> str | None:
    """Hand ``run`` over if the answer of ``step`` (generation ``gen``) calls a handoff;
    the agent it went to, or None. Safe to repeat: a redelivered step writes the same."""
    targets = {tool_name(name): name for name in run.handoffs if name in agents}
    chosen: str | None = None
    for index, call in enumerate(calls):
        if call.name not in targets:
            continue
        head: dict[str, Any] = {
            "id": keys.tool_call_id(run.id, step, index),
            "name": call.name,
            "model_call_id": call.id,
        }
        if gen:
            head["gen"] = gen
        if chosen is None:
            chosen = targets[call.name]
            result = head | {"ok": True, "output": f"handed over to {chosen}"}
            status = ToolCallStatus.SUCCEEDED
        else:
            error = {"code": "handoff_refused", "message": f"handed over to {chosen} already"}
            result = head | {"ok": False, "error": error}
            status = ToolCallStatus.FAILED
        store.complete_tool(head["id"], "", result, run.id, step, status=status)
    if chosen is None:
        return None
    _switch(store, run, step, agents.get(chosen))
    return chosen


def _switch(store: RunStore, run: RunRecord, step: int, agent: Agent) -> None:
    """Make ``run`` the run of ``agent`` from the step after ``step`` on."""
    key = store.run_key(run.id)
    tools = agent.tool_names if agent.tool_names is not None else list(run.tools)
    pipe = store.redis.pipeline(transaction=True)
    pipe.hset(
        key,
        mapping={
            "agent": agent.name,
            "tools": json.dumps(tools),
            "subagents": json.dumps(agent.subagent_names),
            "handoffs": json.dumps(agent.handoff_names),
            "handoff_step": step,
            "handoff_instructions": _instructions(agent, run),
        },
    )
    if agent.output is not None:
        pipe.hset(key, "output_schema", json.dumps(agent.output.schema))
    else:
        pipe.hdel(key, "output_schema")
    pipe.execute()
    if run.agent != agent.name:
        store.event(run.id, "handoff", {"from": run.agent or None, "to": agent.name, "step": step})


def instructions_after(run: RunRecord, step: int) -> list[dict[str, Any]]:
    """The system message step ``step`` puts before its call if the step before handed the
    run over ([] if it did not)."""
    if run.fields.get("handoff_step") != str(step - 1):
        return []
    text = run.fields.get("handoff_instructions") or ""
    return [{"role": "system", "content": text}] if text else []
