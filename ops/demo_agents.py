"""The demo's agents, loaded by the demo fleet (``AGENTFLEET_AGENT_MODULES=ops.demo_agents``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from agentfleet.tasks.agents import Agent


class TicketLabel(BaseModel):
    """What the triage agent answers: a typed result."""

    label: Literal["bug", "question", "praise"]
    urgent: bool


support_triage = Agent(
    name="support_triage",
    description="Labels a support ticket.",
    instructions="Label the ticket: bug, question or praise; say whether it is urgent.",
    tools=[],
    output_type=TicketLabel,
    model_settings={"temperature": 0},
)


support_lead = Agent(
    name="support_lead",
    description="Has tickets triaged by support_triage, one child run each, and sums up.",
    instructions="Give each ticket to support_triage at once, then sum up what it found.",
    tools=[],
    subagents=[support_triage],
)
