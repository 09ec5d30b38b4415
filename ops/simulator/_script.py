"""The deterministic "model": read directives from the prompt and decide the reply.

Directives live in the user message that starts the current turn: the last user message
other than the fleet's output repair requests (user messages named ``output_repair``). A
test scripts a whole run with one prompt, every step of it replays the same script, and a
thread's earlier turns (messages before that one) are history the script does not see:

- ``call NAME {json}`` (repeatable): call those tools in one answer, then answer
  ``Results: name=output; ...``; ``[[rounds:N]]`` / ``[[loop]]`` call them N turns / forever;
  ``[[badargs]]`` sends ``BAD_ARGUMENTS`` as every call's arguments;
- ``[[reply:TEXT]]`` answers TEXT; ``[[json:{...}]]`` answers exactly that JSON text
  (any JSON value, ``]]`` inside it included); otherwise the answer is ``Echo: <prompt>``,
  or with a ``response_format`` the JSON built by ``agentfleet.simulator._schema`` (a
  property named like a key of the turn's tool-call arguments or JSON tool results takes
  that key's latest value);
- ``[[invalid:N]]``: the first N final answers of a turn (counted as the assistant messages
  without ``tool_calls`` already in it) are invalid, alternately
  ``NOT_JSON`` and JSON that breaks the schema (``_schema.violation``: a required property
  missing), starting with ``NOT_JSON``; the answers after them are valid;
- ``[[usage:PROMPT,COMPLETION]]`` or ``[[usage:PROMPT,COMPLETION,CACHED]]``: the ``usage`` of
  every answer (``CACHED`` as ``prompt_tokens_details.cached_tokens``); otherwise a token is
  four characters of the messages, tools and answer;
- ``[[latency:S]]``, ``[[error:CODE]]``, ``[[flaky:N]]`` (the first N requests of each
  conversation, the same messages, are answered 503: a retry of the same call then succeeds),
  ``[[garbage]]`` and ``[[tag:NAME]]`` are acted on by the HTTP layer.

The request's model settings (``_settings.ModelSettings``) then cut the text (``stop``,
``max_tokens``) and choose the calls (``tool_choice``, ``parallel_tool_calls``).
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

from ._schema import instance, violation
from ._settings import ModelSettings

# Only known directive names are recognised, so "[[1]]" inside JSON arguments
# or prose is left alone.
_DIRECTIVE_RE = re.compile(
    r"\[\[(badargs|loop|garbage|rounds|reply|latency|error|tag|invalid|usage|flaky)(?::(.*?))?\]\]",
    re.DOTALL,
)
# The look-behind keeps words such as "recall" from starting a call.
_CALL_RE = re.compile(r"(?<![A-Za-z0-9_])call\s+([A-Za-z_][A-Za-z0-9_.-]*)")
_SPACES_RE = re.compile(r"[ \t]{2,}")
_JSON_OPEN = "[[json:"
_USAGE_RE = re.compile(r"\s*(\d+)\s*,\s*(\d+)\s*(?:,\s*(\d+)\s*)?")
_DECODER = json.JSONDecoder()

BAD_ARGUMENTS = "{not json"
"""The ``arguments`` string sent for every tool call under ``[[badargs]]``."""

ECHO_LIMIT = 200
"""Maximum number of prompt characters repeated in an ``Echo:`` answer."""

NOT_JSON = "Sorry, this answer is not JSON."
"""The text of the invalid answers under ``[[invalid:N]]`` that are not JSON at all."""

CHARS_PER_TOKEN = 4
"""Characters counted as one token, in usage and by ``max_tokens``."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts to report instead of the computed ones."""

    prompt: int
    completion: int
    cached: int | None = None
    """Reported as ``prompt_tokens_details.cached_tokens`` when set."""

    def to_json(self) -> dict[str, int | None]:
        """Return the counts as the admin routes show them."""
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "cached_tokens": self.cached,
        }


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
    json: str | None = None
    """The text of a ``[[json:...]]`` directive, answered as it is."""
    invalid: int = 0
    usage: Usage | None = None
    flaky: int = 0
    """Requests of each conversation answered 503 before it is answered."""
    prompt: str = ""
    """The prompt with every directive removed, used for ``Echo:`` answers."""


@dataclass(frozen=True, slots=True)
class Reply:
    """The assistant turn chosen for one request."""

    content: str | None
    tool_calls: tuple[dict[str, Any], ...]
    finish_reason: str
    usage: dict[str, Any]


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


#: The ``name`` of the user messages with which the fleet sends an invalid answer back.
REPAIR_NAME = "output_repair"


def current_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages of the current turn: from the last user message that is not a repair
    request (every message, if there is none)."""
    start = 0
    for index, message in enumerate(messages):
        if message.get("role") == "user" and message.get("name") != REPAIR_NAME:
            start = index
    return messages[start:]


def script_text(messages: list[dict[str, Any]]) -> str:
    """The text that scripts the current turn (see the module docstring)."""
    return first_user_text(current_turn(messages))


def known_values(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The keys of the turn's tool-call arguments and JSON-object tool results, each with its
    latest value: what a schema's answer takes for a property of the same name."""
    known: dict[str, Any] = {}
    for message in messages:
        sources = [c.get("function", {}).get("arguments") for c in message.get("tool_calls") or []]
        if message.get("role") == "tool":
            sources.append(message.get("content"))
        for source in sources:
            with contextlib.suppress(TypeError, ValueError):
                value = json.loads(source) if isinstance(source, str) else None
                if isinstance(value, dict):
                    known.update(value)
    return known


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
    text = _take_json(flags, text)
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
        json=flags.get("json"),
        invalid=flags.get("invalid", 0),
        usage=flags.get("usage"),
        flaky=flags.get("flaky", 0),
        prompt=_SPACES_RE.sub(" ", prompt).strip(),
    )


def _take_json(flags: dict[str, Any], text: str) -> str:
    """Record the first well-formed ``[[json:VALUE]]`` and remove every one from ``text``.

    Read with a JSON decoder rather than the directive pattern, because the
    value may itself hold ``]]``.
    """
    start = text.find(_JSON_OPEN)
    while start >= 0:
        begin = start + len(_JSON_OPEN)
        with contextlib.suppress(ValueError):
            while begin < len(text) and text[begin].isspace():
                begin += 1
            _, end = _DECODER.raw_decode(text, begin)
            close = text.find("]]", end)
            if close >= 0 and not text[end:close].strip():
                flags.setdefault("json", text[begin:end])
                text = text[:start] + text[close + 2 :]
                start = text.find(_JSON_OPEN, start)
                continue
        start = text.find(_JSON_OPEN, start + 1)
    return text


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
    elif name in ("rounds", "invalid", "flaky"):
        if value.strip().isdigit():
            flags[name] = int(value)
    elif name == "usage":
        flags["usage"] = _usage_directive(value)
    elif name == "error":
        if value.strip().isdigit() and 100 <= int(value) <= 599:
            flags["error"] = int(value)
    elif name == "latency":
        with contextlib.suppress(ValueError):
            flags["latency"] = max(0.0, float(value))


def _usage_directive(value: str) -> Usage | None:
    """Read ``PROMPT,COMPLETION[,CACHED]``; ``None`` when malformed."""
    found = _USAGE_RE.fullmatch(value)
    if found is None:
        return None
    cached = found.group(3)
    return Usage(int(found.group(1)), int(found.group(2)), None if cached is None else int(cached))


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


def decide(
    messages: list[dict[str, Any]],
    tools: list[Any] | None,
    script: Script,
    settings: ModelSettings | None = None,
    usage: Usage | None = None,
) -> Reply:
    """Choose the assistant turn for a conversation that follows ``script``.

    ``usage`` is the provider's default usage, used when the script sets none.
    """
    settings = settings or ModelSettings()
    usage = script.usage or usage
    prompt_tokens = sum(len(message_text(m.get("content"))) // 4 + 1 for m in messages)
    if tools:
        prompt_tokens += len(json.dumps(tools)) // 4
    # Tokens count the whole conversation; the answer follows the current turn only.
    conversation, messages = messages, current_turn(messages)

    calls = _chosen_calls(messages, tools, script, settings)
    if calls:
        tool_calls = _tool_calls(conversation, calls, script.badargs)
        emitted = "".join(call["function"]["arguments"] for call in tool_calls)
        return Reply(None, tool_calls, "tool_calls", _usage(prompt_tokens, emitted, usage))

    text, finish = _cut(_answer_text(messages, script, settings), settings)
    limit = settings.max_tokens
    return Reply(text, (), finish, _usage(prompt_tokens, text, usage, limit))


def _chosen_calls(
    messages: list[dict[str, Any]], tools: list[Any] | None, script: Script, settings: ModelSettings
) -> tuple[CallSpec, ...]:
    """The tool calls of this turn (none for a final answer), after ``tool_choice``."""
    if not tools or settings.tool_choice == "none":
        return ()
    if settings.forced is not None:
        named = tuple(call for call in script.calls if call.name == settings.forced)
        calls = named or (CallSpec(settings.forced, "{}"),)
    else:
        rounds_done = sum(
            1 for m in messages if m.get("role") == "assistant" and m.get("tool_calls")
        )
        calls = script.calls if script.loop or rounds_done < script.rounds else ()
        if not calls and settings.tool_choice == "required":
            calls = script.calls or _first_tool(tools)
    return calls if settings.parallel_tool_calls else calls[:1]


def _first_tool(tools: list[Any]) -> tuple[CallSpec, ...]:
    """A call of the first offered function with no arguments (for ``required``)."""
    function = tools[0].get("function") if isinstance(tools[0], dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return (CallSpec(name, "{}"),) if isinstance(name, str) else ()


def _tool_calls(
    messages: list[dict[str, Any]], calls: tuple[CallSpec, ...], badargs: bool
) -> tuple[dict[str, Any], ...]:
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
                "arguments": BAD_ARGUMENTS if badargs else call.arguments,
            },
        }
        for index, call in enumerate(calls)
    )


def _call_id(conversation: str, index: int) -> str:
    """Return the id of tool call ``index`` in the turn that answers ``conversation``."""
    digest = hashlib.sha1((conversation + str(index)).encode(), usedforsecurity=False)
    return "call_" + digest.hexdigest()[:24]


def _answer_text(messages: list[dict[str, Any]], script: Script, settings: ModelSettings) -> str:
    """Return the final text answer (before ``stop`` and ``max_tokens`` cut it)."""
    answered = sum(1 for m in messages if m.get("role") == "assistant" and not m.get("tool_calls"))
    output = settings.output
    if answered < script.invalid:
        if answered % 2 == 0:
            return NOT_JSON
        return json.dumps(violation(None if output is None else output.schema, script.prompt))
    if script.json is not None:
        return script.json
    if script.reply is not None:
        return script.reply
    if output is not None and output.schema is not None:
        return json.dumps(instance(output.schema, script.prompt, known_values(messages)))
    if any(m.get("role") == "tool" for m in messages):
        text = "Results: " + "; ".join(_latest_results(messages))
    else:
        text = "Echo: " + script.prompt[:ECHO_LIMIT]
    # A JSON object without a schema: the plain answer under one key.
    return text if output is None else json.dumps({"answer": text})


def _cut(text: str, settings: ModelSettings) -> tuple[str, str]:
    """Cut ``text`` at its first stop sequence, then at ``max_tokens``; add the finish reason."""
    ends = [found for stop in settings.stop if (found := text.find(stop)) >= 0]
    if ends:
        text = text[: min(ends)]
    limit = settings.max_tokens
    if limit is not None and len(text) > limit * CHARS_PER_TOKEN:
        return text[: limit * CHARS_PER_TOKEN], "length"
    return text, "stop"


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


def _usage(
    prompt_tokens: int, emitted: str, usage: Usage | None, limit: int | None = None
) -> dict[str, Any]:
    """Return an OpenAI ``usage`` object: the configured counts, else four characters a token."""
    if usage is not None:
        counted: dict[str, Any] = {
            "prompt_tokens": usage.prompt,
            "completion_tokens": usage.completion,
            "total_tokens": usage.prompt + usage.completion,
        }
        if usage.cached is not None:
            counted["prompt_tokens_details"] = {"cached_tokens": usage.cached}
        return counted
    completion_tokens = len(emitted) // CHARS_PER_TOKEN + 1
    if limit is not None:
        # A cut answer has used its whole limit, never more.
        completion_tokens = min(completion_tokens, limit)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
