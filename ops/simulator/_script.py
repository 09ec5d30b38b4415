"""The deterministic "model": read directives from the prompt and decide the reply.

Directives live in the first user message, so a test scripts a whole
conversation with one prompt and every later turn replays the same script.
Nothing here does I/O; the HTTP layer lives in ``_app``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# Only known directive names are recognised, so "[[1]]" inside JSON arguments
# or prose is left alone.
_DIRECTIVE_RE = re.compile(
    r"\[\[(badargs|loop|garbage|rounds|reply|latency|error|tag)(?::(.*?))?\]\]",
    re.DOTALL,
)
# The look-behind keeps words such as "recall" from starting a call.
_CALL_RE = re.compile(r"(?<![A-Za-z0-9_])call\s+([A-Za-z_][A-Za-z0-9_.-]*)")
_SPACES_RE = re.compile(r"[ \t]{2,}")
_DECODER = json.JSONDecoder()

BAD_ARGUMENTS = "{not json"
"""The ``arguments`` string sent for every tool call under ``[[badargs]]``."""

ECHO_LIMIT = 200
"""Maximum number of prompt characters repeated in an ``Echo:`` answer."""


@dataclass(frozen=True, slots=True)
class CallSpec:
    """One scripted tool call: the function name and its JSON argument string."""

    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Script:
    """Everything the directives of one prompt ask for."""

    calls: tuple[CallSpec, ...] = ()
    badargs: bool = False
    rounds: int = 1
    loop: bool = False
    reply: str | None = None
    latency: float | None = None
    error: int | None = None
    garbage: bool = False
    tags: tuple[str, ...] = ()
    prompt: str = ""
    """The prompt with every directive removed, used for ``Echo:`` answers."""


@dataclass(frozen=True, slots=True)
class Reply:
    """The assistant turn chosen for one request."""

    content: str | None
    tool_calls: tuple[dict[str, Any], ...]
    finish_reason: str
    usage: dict[str, int]


def message_text(content: Any) -> str:
    """Return the text of a message ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def first_user_text(messages: list[dict[str, Any]]) -> str:
    """Return the text of the first user message, or ``""`` when there is none."""
    for message in messages:
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


@lru_cache(maxsize=4096)
def parse_script(text: str) -> Script:
    """Parse the directives in ``text``.

    Cached because every turn of a conversation (and every request of a
    benchmark) carries the same first user message.
    """
    flags: dict[str, Any] = {"tags": []}
    for match in _DIRECTIVE_RE.finditer(text):
        _apply_directive(flags, match.group(1), match.group(2))
    # Bracket directives are removed before looking for calls so that
    # "[[reply:call me]]" does not turn into a tool call.
    rest = _DIRECTIVE_RE.sub("", text)
    calls, prompt = _parse_calls(rest)
    return Script(
        calls=calls,
        badargs=bool(flags.get("badargs")),
        rounds=flags.get("rounds", 1),
        loop=bool(flags.get("loop")),
        reply=flags.get("reply"),
        latency=flags.get("latency"),
        error=flags.get("error"),
        garbage=bool(flags.get("garbage")),
        tags=tuple(flags["tags"]),
        prompt=_SPACES_RE.sub(" ", prompt).strip(),
    )


def _apply_directive(flags: dict[str, Any], name: str, value: str | None) -> None:
    """Record one bracket directive; malformed values are ignored."""
    if name in ("badargs", "loop", "garbage"):
        flags[name] = True
    elif value is None:
        return
    elif name == "reply":
        flags["reply"] = value
    elif name == "tag":
        if value.strip():
            flags["tags"].append(value.strip())
    elif name == "rounds":
        if value.strip().isdigit():
            flags["rounds"] = int(value)
    elif name == "error":
        if value.strip().isdigit() and 100 <= int(value) <= 599:
            flags["error"] = int(value)
    elif name == "latency":
        with contextlib.suppress(ValueError):
            flags["latency"] = max(0.0, float(value))


def _parse_calls(text: str) -> tuple[tuple[CallSpec, ...], str]:
    """Find ``call NAME {JSON}`` directives; return them and the remaining text."""
    calls: list[CallSpec] = []
    kept: list[str] = []
    pos = 0
    for match in _CALL_RE.finditer(text):
        if match.start() < pos:
            continue  # inside the JSON arguments of the previous call
        # A sentence-ending "." or "-" is punctuation, not part of the name.
        name = match.group(1).rstrip(".-") or match.group(1)
        end = match.end()
        arguments = "{}"
        brace = end
        while brace < len(text) and text[brace].isspace():
            brace += 1
        if brace < len(text) and text[brace] == "{":
            try:
                value, end = _DECODER.raw_decode(text, brace)
                arguments = json.dumps(value)
            except ValueError:
                pass  # not JSON after all: call with no arguments
        calls.append(CallSpec(name=name, arguments=arguments))
        kept.append(text[pos : match.start()])
        pos = end
    kept.append(text[pos:])
    return tuple(calls), "".join(kept)


def decide(messages: list[dict[str, Any]], tools: list[Any] | None, script: Script) -> Reply:
    """Choose the assistant turn for a conversation that follows ``script``."""
    prompt_tokens = sum(len(message_text(m.get("content"))) // 4 + 1 for m in messages)
    if tools:
        prompt_tokens += len(json.dumps(tools)) // 4

    rounds_done = sum(1 for m in messages if m.get("role") == "assistant" and m.get("tool_calls"))
    if tools and script.calls and (script.loop or rounds_done < script.rounds):
        tool_calls = _tool_calls(messages, script)
        emitted = "".join(call["function"]["arguments"] for call in tool_calls)
        return Reply(None, tool_calls, "tool_calls", _usage(prompt_tokens, emitted))

    text = _answer_text(messages, script)
    return Reply(text, (), "stop", _usage(prompt_tokens, text))


def _tool_calls(messages: list[dict[str, Any]], script: Script) -> tuple[dict[str, Any], ...]:
    """Build the OpenAI ``tool_calls`` list with ids derived from the conversation."""
    # Hashing the conversation keeps ids stable for identical requests while
    # giving every round of a multi-round script fresh ids.
    base = json.dumps(messages, sort_keys=True)
    return tuple(
        {
            "id": _call_id(base, index),
            "type": "function",
            "function": {
                "name": call.name,
                "arguments": BAD_ARGUMENTS if script.badargs else call.arguments,
            },
        }
        for index, call in enumerate(script.calls)
    )


def _call_id(conversation: str, index: int) -> str:
    """Return the id of tool call ``index`` in the turn that answers ``conversation``."""
    digest = hashlib.sha1((conversation + str(index)).encode(), usedforsecurity=False)
    return "call_" + digest.hexdigest()[:24]


def _answer_text(messages: list[dict[str, Any]], script: Script) -> str:
    """Return the final text answer: scripted reply, tool results, or an echo."""
    if script.reply is not None:
        return script.reply
    if any(m.get("role") == "tool" for m in messages):
        return "Results: " + "; ".join(_latest_results(messages))
    return "Echo: " + script.prompt[:ECHO_LIMIT]


def _latest_results(messages: list[dict[str, Any]]) -> list[str]:
    """Return ``name=content`` for each tool result after the last tool-calling turn."""
    names: dict[str, str] = {}
    start = 0
    for index, message in enumerate(messages):
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        if calls:
            start = index + 1
            names = {
                str(call.get("id")): str((call.get("function") or {}).get("name"))
                for call in calls
                if isinstance(call, dict)
            }
    results: list[str] = []
    for message in messages[start:]:
        if message.get("role") != "tool":
            continue
        call_id = str(message.get("tool_call_id", ""))
        results.append(f"{names.get(call_id, call_id)}={message_text(message.get('content'))}")
    return results


def _usage(prompt_tokens: int, emitted: str) -> dict[str, int]:
    """Return an OpenAI ``usage`` object with a rough four-characters-per-token count."""
    completion_tokens = len(emitted) // 4 + 1
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
