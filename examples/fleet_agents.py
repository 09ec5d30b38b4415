"""The examples' agents. Workers and the API load them with
``AGENTFLEET_AGENT_MODULES=examples.fleet_agents`` (and the tools of ``examples.fleet_tools``).

The instructions are what a real model would follow. Against the built-in LLM simulator the
examples' prompts carry the simulator's script instead, so that they play out the same way
every time (``agentfleet-simulator --help`` lists its directives)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from agentfleet.tasks.agents import Agent
from agentfleet.tasks.tools.builtin import calculator
from examples.fleet_tools import issue_refund


class Critique(BaseModel):
    """A critic's verdict on a draft."""

    approved: bool
    feedback: str


class Finding(BaseModel):
    """What one researcher found."""

    topic: str
    summary: str
    confidence: float = Field(ge=0, le=1)


# Hierarchical planning: a planner splits a goal into tasks and hands each to a worker, which
# may use tools of its own; the planner combines what they report.
plan_worker = Agent(
    name="plan_worker",
    description="Carries out one task of a plan and reports the result.",
    instructions="Carry out the task you are given; use the calculator for any arithmetic.",
    tools=[calculator],
)
planner = Agent(
    name="planner_lead",
    description="Plans a goal and delegates its tasks.",
    instructions="Split the goal into independent tasks, give each to a plan_worker at once, "
    "then combine their reports into one plan.",
    tools=[],
    subagents=[plan_worker],
    max_steps=4,
)

# Debate: a moderator asks both sides for their case, round after round, then decides.
pro = Agent(
    name="debater_pro",
    description="Argues for the motion.",
    instructions="Argue for the motion in two sentences; answer the other side's last point.",
    tools=[],
)
con = Agent(
    name="debater_con",
    description="Argues against the motion.",
    instructions="Argue against the motion in two sentences; answer the other side's last point.",
    tools=[],
)
moderator = Agent(
    name="moderator",
    description="Runs a debate between debater_pro and debater_con and decides it.",
    instructions="Each round, ask debater_pro and debater_con for their case. After the "
    "rounds, say which side argued better and why.",
    tools=[],
    subagents=[pro, con],
    max_steps=6,
)

# Reflection: a writer drafts, a critic judges, until the critic approves or rounds run out.
writer = Agent(
    name="writer",
    description="Writes and revises short texts.",
    instructions="Write what you are asked for. If a critic's feedback is given, revise the "
    "draft to address it.",
    tools=[],
)
critic = Agent(
    name="critic",
    description="Judges a draft.",
    instructions="Judge the draft: approve it only if it is clear, correct and short; else say "
    "what to change.",
    tools=[],
    output_type=Critique,
)

# Parallel research: researchers look into one topic each, at the same time; an aggregator
# combines their typed findings.
researcher = Agent(
    name="topic_researcher",
    description="Researches one topic and reports a finding.",
    instructions="Research the topic you are given and report what you found.",
    tools=[],
    output_type=Finding,
)
aggregator = Agent(
    name="aggregator",
    description="Has topics researched in parallel and combines the findings.",
    instructions="Give each topic to a topic_researcher at once, then write one summary of "
    "their findings.",
    tools=[],
    subagents=[researcher],
    max_steps=3,
)

# An approval-gated tool: refunds wait for a person.
support = Agent(
    name="refund_desk",
    description="Handles refund requests.",
    instructions="Refund what the customer is owed with issue_refund.",
    tools=[issue_refund],
)
