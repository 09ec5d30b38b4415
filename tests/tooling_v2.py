"""The next version of :mod:`tests.tooling_v1`: ``shout`` takes one more argument (another
schema under the same name), and ``murmur`` is new."""

from __future__ import annotations

from agentfleet.tasks.tools import tool


@tool
def shout(text: str, times: int = 1) -> str:
    """Upper-case the text, repeated."""
    return " ".join([text.upper()] * times)


@tool
def murmur(text: str) -> str:
    """Lower-case the text."""
    return text.lower()
