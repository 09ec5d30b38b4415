"""A tool module in two versions (this one and :mod:`tests.tooling_v2`), for fleets whose
workers were deployed with different tools: loaded per process by ``AGENTFLEET_TOOL_MODULES``."""

from __future__ import annotations

from agentfleet.tasks.tools import tool


@tool
def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper()
