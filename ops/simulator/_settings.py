"""Model settings of a chat request, validated the way OpenAI validates them.

``parse_settings`` reads the sampling and tool settings of a request body and refuses
out-of-range values with a ``RequestError`` (a 400 naming the field). Of those settings
only the ones that change an answer are kept:

- ``max_completion_tokens`` (or ``max_tokens``; the smaller when both are given) cuts the
  answer's text after that many tokens of four characters, with ``finish_reason: "length"``;
- ``stop`` (a string or up to four) cuts the text where the first of them begins;
- ``tool_choice``: ``"none"`` never calls tools, ``"required"`` always does (the scripted
  calls, else the first offered tool with ``{}``), ``{"type": "function", "function":
  {"name": X}}`` calls X (with the script's arguments for X, else ``{}``);
- ``parallel_tool_calls: false`` sends only the first of the scripted calls per answer;
- ``response_format`` (see ``agentfleet.simulator._schema``).

``temperature``, ``top_p``, ``seed``, ``reasoning_effort`` and the penalties are checked and
otherwise only recorded (``GET /_sim/requests``): the simulator is deterministic anyway.
Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._responses import RequestError
from ._schema import OutputFormat, parse_response_format

REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
"""Values of ``reasoning_effort`` accepted."""

MAX_STOP = 4
"""How many stop sequences a request may give, as with OpenAI."""

_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
}
_TOOL_CHOICES = ("none", "auto", "required")


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """What a request's settings change in its answer; the defaults change nothing."""

    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    tool_choice: str = "auto"
    """``auto``, ``none``, ``required`` or ``function`` (then ``forced`` names it)."""
    forced: str | None = None
    parallel_tool_calls: bool = True
    output: OutputFormat | None = None


def parse_settings(body: dict[str, Any], conversation: Callable[[], str]) -> ModelSettings:
    """Validate the model settings of ``body``; ``conversation`` returns its messages' text."""
    for name, (low, high) in _RANGES.items():
        _number(body.get(name), name, low, high)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("Invalid type for 'seed': expected an integer.", "seed")
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise RequestError(
            "Invalid value for 'reasoning_effort': expected one of "
            + ", ".join(REASONING_EFFORTS)
            + ".",
            "reasoning_effort",
        )
    tools = body.get("tools")
    names = _tool_names(tools)
    tool_choice, forced = _tool_choice(body.get("tool_choice"), names)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise RequestError(
                "Invalid type for 'parallel_tool_calls': expected a boolean.", "parallel_tool_calls"
            )
        if names is None:
            raise RequestError(_only_with_tools("parallel_tool_calls"), "parallel_tool_calls")
    return ModelSettings(
        max_tokens=_max_tokens(body),
        stop=_stop(body.get("stop")),
        tool_choice=tool_choice,
        forced=forced,
        parallel_tool_calls=parallel is not False,
        output=parse_response_format(body.get("response_format"), conversation),
    )


def _number(value: Any, name: str, low: float, high: float) -> None:
    """Refuse a setting that is not a finite number in ``[low, high]`` (``None`` passes)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"Invalid type for '{name}': expected a number.", name)
    if not math.isfinite(value) or not low <= value <= high:
        raise RequestError(
            f"Invalid '{name}': expected a number from {low:g} to {high:g}, got {value!r}.", name
        )


def _max_tokens(body: dict[str, Any]) -> int | None:
    """The completion token limit: the smaller of ``max_completion_tokens`` and ``max_tokens``."""
    limits: list[int] = []
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestError(f"Invalid '{name}': expected an integer of at least 1.", name)
        limits.append(value)
    return min(limits) if limits else None


def _stop(value: Any) -> tuple[str, ...]:
    """The stop sequences: ``null``, a string or a list of up to four strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if (
        not isinstance(value, list)
        or len(value) > MAX_STOP
        or not all(isinstance(item, str) for item in value)
    ):
        raise RequestError(
            f"Invalid 'stop': expected a string or a list of up to {MAX_STOP} strings.", "stop"
        )
    return tuple(item for item in value if item)


def _tool_names(tools: Any) -> list[str] | None:
    """The function names offered by ``tools``, or ``None`` when it offers none."""
    if not isinstance(tools, list) or not tools:
        return None
    names: list[str] = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


def _tool_choice(value: Any, names: list[str] | None) -> tuple[str, str | None]:
    """Validate ``tool_choice``; return its mode and the forced function's name."""
    if value is None:
        return "auto", None
    if names is None:
        raise RequestError(_only_with_tools("tool_choice"), "tool_choice")
    if isinstance(value, str):
        if value not in _TOOL_CHOICES:
            raise RequestError(
                "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' "
                "or a named function.",
                "tool_choice",
            )
        return value, None
    function = value.get("function") if isinstance(value, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(value, dict) or value.get("type") != "function" or not isinstance(name, str):
        raise RequestError(
            "Invalid value for 'tool_choice': expected {'type': 'function', "
            "'function': {'name': ...}}.",
            "tool_choice",
        )
    if name not in names:
        raise RequestError(
            f"Invalid value for 'tool_choice': no function named {name!r} was specified "
            "in the 'tools' parameter.",
            "tool_choice",
        )
    return "function", name


def _only_with_tools(name: str) -> str:
    return f"Invalid value for '{name}': '{name}' is only allowed when 'tools' are specified."


__all__ = ["MAX_STOP", "REASONING_EFFORTS", "ModelSettings", "parse_settings"]
