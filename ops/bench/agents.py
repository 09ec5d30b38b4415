"""The agents of section (g) (:mod:`ops.bench.features`), loaded by its API and workers with
``AGENTFLEET_AGENT_MODULES=ops.bench.agents``.

Neither has instructions, and both offer every registered tool, as an ad-hoc run that names
none does: the model is sent the same call, so a run by name differs from the ad-hoc run only
in what naming the agent costs, and the typed one only in its output schema besides.
"""

from __future__ import annotations

from pydantic import BaseModel

from agentfleet.tasks.agents import Agent

#: The agents' names, as the bench's run requests give them.
PLAIN = "bench_plain"
TYPED = "bench_typed"


class Reply(BaseModel):
    """What the typed agent answers (the simulator builds it from the schema)."""

    text: str


plain = Agent(name=PLAIN, description="An ad-hoc run by name.", tools=None)
typed = Agent(name=TYPED, description="The same, answering a Reply.", tools=None, output_type=Reply)
