"""Scripting the built-in LLM simulator for the examples.

The simulator plays the model from directives in the prompt (``call NAME {json}`` calls a tool
or a sub-agent, ``[[reply:TEXT]]`` answers TEXT, ``[[json:{...}]]`` answers that JSON,
``[[rounds:N]]`` repeats the calls N turns). With a real provider the prompts would be plain
requests and the model would decide; the agents and the code around them stay the same.
"""

from __future__ import annotations

import json


def call(agent: str, arguments: dict[str, object] | str) -> str:
    """The directive that makes the model call ``agent`` (a tool or a sub-agent). Text is a
    sub-agent's input. The brackets of directives meant for the sub-agent's own model are
    escaped in the JSON, so the caller's model does not take them for its own."""
    if isinstance(arguments, str):
        arguments = {"input": arguments}
    return f"call {agent} {json.dumps(arguments).replace('[', chr(92) + 'u005b')}"
