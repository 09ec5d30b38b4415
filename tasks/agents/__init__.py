"""Agents: definitions declared once (:class:`Agent` in Python, or files) and run by name.

Your agents live in your modules, loaded with ``AGENTFLEET_AGENT_MODULES`` (comma-separated),
or in YAML or JSON files named by ``AGENTFLEET_AGENT_FILES``, on workers and on the API alike.
"""

from agentfleet.tasks.agents._agent import (
    OVERRIDABLE,
    Agent,
    AgentRegistry,
    Instructions,
    RunContext,
    registry,
)
from agentfleet.tasks.agents._declared import AgentDeclaration, load_agent_file, load_agents

__all__ = [
    "OVERRIDABLE",
    "Agent",
    "AgentDeclaration",
    "AgentRegistry",
    "Instructions",
    "RunContext",
    "load_agent_file",
    "load_agents",
    "registry",
]
