"""Agents used by the tests, loaded into the API and workers through
``AGENTFLEET_AGENT_MODULES`` (only built-in tools: every worker has them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from agentfleet.tasks.agents import Agent, RunContext
from agentfleet.tasks.tools.builtin import calculator


class Verdict(BaseModel):
    """What the triage agent answers."""

    label: Literal["bug", "question", "other"]
    confidence: float = Field(ge=0, le=1)


class Ticket(BaseModel):
    """What the triage agent takes."""

    title: str
    body: str = ""


def _triage_instructions(context: RunContext) -> str:
    team = context.metadata.get("team", "support")
    return f"You triage tickets for the {team} team. Run {context.run_id}."


triage = Agent(
    name="triage",
    description="Labels a ticket.",
    instructions=_triage_instructions,
    model="sim-1",
    tools=[calculator],
    input_type=Ticket,
    output_type=Verdict,
    model_settings={"temperature": 0, "seed": 7},
    max_steps=3,
    allow_overrides=frozenset({"model_settings", "max_steps"}),
)

echo = Agent(
    name="echo",
    description="Says back what it is told.",
    instructions="You repeat the user.",
    tools=[],
)

strict_json = Agent(
    name="strict_json",
    instructions="Answer in JSON.",
    tools=[],
    output_type=Verdict,
    output_repairs=1,
)

cached_echo = Agent(
    name="cached_echo",
    description="Says back what it is told, reusing answers for a minute.",
    instructions="You repeat the user.",
    tools=[],
    cache_ttl=60,
)

# Sub-agents: each call of one is a child run (agentfleet.tasks.children). The simulator's
# script for a child is its input, so a parent's prompt scripts its children too.
researcher = Agent(
    name="researcher",
    description="Finds facts about a topic.",
    instructions="You research.",
    tools=[calculator],
)

rater = Agent(
    name="rater",
    description="Rates a ticket.",
    instructions="You rate tickets.",
    tools=[],
    input_type=Ticket,
    output_type=Verdict,
)

planner = Agent(
    name="planner",
    description="Splits a task and delegates its parts.",
    instructions="You plan and delegate.",
    tools=[calculator],
    subagents=[researcher, rater],
    max_steps=4,
)

recursive = Agent(
    name="recursive",
    description="Delegates to itself.",
    instructions="You delegate.",
    tools=[],
    subagents=["recursive"],
)

# A handoff: frontdesk hands the conversation over to billing (agentfleet.tasks.handoffs).
billing = Agent(
    name="billing",
    description="Answers questions about invoices.",
    instructions="You are billing. Work out amounts with the calculator.",
    tools=[calculator],
)
frontdesk = Agent(
    name="frontdesk",
    description="Greets customers and hands them over.",
    instructions="You are the front desk. Hand billing questions over to billing.",
    tools=[],
    handoffs=[billing],
)
