"""Fitting a transcript into a run's context budget before each LLM call.

The system prompt and the run's own input always stay. What goes first, until the
transcript fits:

1. tool outputs longer than a quarter of the budget are cut, with a visible marker;
2. the oldest whole turns of the history before the input (a thread's earlier runs) go, a
   turn being a user message and everything up to the next one, so a tool call never loses
   its result;
3. then the oldest of the run's own steps before its last one (an assistant message with
   the tool results that answer it), for the same reason together.

4. optionally (a run's or agent's ``context_summary``), what went is replaced by a summary a
   model makes (``AGENTFLEET_CONTEXT_SUMMARY_MODEL``, else the run's own), placed after the
   system prompt: the transcript is fitted into the budget less :func:`summary_reserve`, the
   summary's room. The left-out messages only grow from one step to the next (the oldest go
   first, and the transcript only grows at its end), so a step summarizes the previous summary
   and what it leaves out beyond it, not the whole again.

Tokens are counted with the model's tokenizer where ``tiktoken`` is installed and knows the
model (``pip install tiktoken``; its encodings download on first use), otherwise estimated
at four bytes of JSON a token plus four a message, which overcounts English prose a little:
a budget is kept, never exceeded because of the estimate being low.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

#: Tokens a message costs besides its content (its role and separators), as OpenAI counts.
PER_MESSAGE = 4
#: A tool output may take at most this share of the budget before it is cut.
TOOL_OUTPUT_SHARE = 4
TRUNCATED = "[... {cut} characters cut to fit the context budget ...]"

Counter = Callable[[str], int]


def estimate(text: str) -> int:
    """The documented estimate: four bytes of UTF-8 a token, rounded up."""
    return -(-len(text.encode()) // 4)


@lru_cache(maxsize=64)
def counter_for(model: str) -> Counter:
    """The model's tokenizer if ``tiktoken`` has it, else :func:`estimate` (once per model:
    a tokenizer that cannot load is not tried on every call)."""
    try:
        import tiktoken  # optional: not a dependency

        encoding = tiktoken.encoding_for_model(model)
    except Exception as exc:
        log.debug("no tokenizer for %s (%s): estimating tokens", model, exc)
        return estimate
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def count(messages: list[dict[str, Any]], counter: Counter) -> int:
    """The tokens of ``messages``: each one's content (or, for tool calls, their JSON) and
    :data:`PER_MESSAGE`."""
    return sum(PER_MESSAGE + counter(_text(m)) for m in messages)


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    text = content if isinstance(content, str) else json.dumps(content) if content else ""
    if message.get("tool_calls"):
        text += json.dumps(message["tool_calls"])
    return text


@dataclass(frozen=True)
class Fitted:
    """A transcript fitted into a budget, and what fitting it took."""

    messages: list[dict[str, Any]]
    tokens_before: int
    tokens: int
    #: Messages left out (whole turns and steps).
    dropped: int = 0
    #: Tool outputs cut short.
    truncated: int = 0
    #: The messages left out, oldest first.
    left_out: list[dict[str, Any]] = field(default_factory=list)

    @property
    def trimmed(self) -> bool:
        return bool(self.dropped or self.truncated)

    def report(self) -> dict[str, int]:
        return {
            "tokens_before": self.tokens_before,
            "tokens": self.tokens,
            "dropped_messages": self.dropped,
            "truncated_tool_outputs": self.truncated,
        }


def fit(
    messages: list[dict[str, Any]], budget: int, input_index: int, counter: Counter = estimate
) -> Fitted:
    """``messages`` within ``budget`` tokens (0: no budget), keeping everything before
    ``input_index`` that is a system message and the input at ``input_index``; see the
    module's docstring for the order things go in. A transcript that cannot fit keeps what
    must stay: the provider then says whether it fits its window."""
    before = count(messages, counter)
    if budget <= 0 or before <= budget:
        return Fitted(messages, before, before)
    kept, truncated = _cut_tool_outputs(messages, budget // TOOL_OUTPUT_SHARE, counter)
    system = [m for m in kept[:input_index] if m.get("role") == "system"]
    history = _units(kept[len(system) : input_index], starts=("user",))
    own = _units(kept[input_index + 1 :], starts=("assistant", "user"))
    current = kept[input_index : input_index + 1]
    dropped = 0
    # The oldest history first, then the oldest of the run's own steps; its last step stays.
    droppable = [(history, i) for i in range(len(history))] + [
        (own, i) for i in range(max(len(own) - 1, 0))
    ]
    gone: set[tuple[int, int]] = set()
    total = count(kept, counter)
    for units, index in droppable:
        if total <= budget:
            break
        gone.add((id(units), index))
        total -= count(units[index], counter)
        dropped += len(units[index])

    def keep(units: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        return [m for i, unit in enumerate(units) if (id(units), i) not in gone for m in unit]

    fitted = [*system, *keep(history), *current, *keep(own)]
    left_out = [m for units, i in droppable if (id(units), i) in gone for m in units[i]]
    return Fitted(fitted, before, count(fitted, counter), dropped, truncated, left_out)


#: The share of a budget kept for the summary of what was left out, and its bounds (tokens).
SUMMARY_SHARE = 8
SUMMARY_TOKENS = (64, 1024)
SUMMARY_PREFIX = "Summary of the earlier conversation ({n} messages left out to fit the context "
SUMMARY_PREFIX += "budget): "


def summary_reserve(budget: int) -> int:
    """Tokens of ``budget`` kept for the summary: an eighth, within :data:`SUMMARY_TOKENS`."""
    low, high = SUMMARY_TOKENS
    return max(low, min(budget // SUMMARY_SHARE, high))


def summary_request(
    left_out: list[dict[str, Any]], previous: str | None, max_tokens: int
) -> list[dict[str, Any]]:
    """The messages asking a model to summarize ``left_out`` (after the summary ``previous``
    of the messages left out before them)."""
    words = max(max_tokens * 3 // 4, 30)
    lines = [f"{m.get('role', '?')}: {_text(m)}" for m in left_out]
    if previous:
        lines.insert(0, f"(summary so far) {previous}")
    instruction = (
        "Summarize the conversation below for the assistant who continues it. Keep names, "
        f"facts, numbers, decisions and open questions; at most {words} words."
    )
    return [
        {"role": "system", "content": instruction},
        {"role": "user", "content": "\n".join(lines)},
    ]


def with_summary(fitted: list[dict[str, Any]], summary: str, left_out: int) -> list[dict[str, Any]]:
    """``fitted`` with ``summary`` of the ``left_out`` messages after its system messages."""
    head = 0
    while head < len(fitted) and fitted[head].get("role") == "system":
        head += 1
    note = {"role": "system", "content": SUMMARY_PREFIX.format(n=left_out) + summary}
    return [*fitted[:head], note, *fitted[head:]]


def _units(messages: list[dict[str, Any]], starts: tuple[str, ...]) -> list[list[dict[str, Any]]]:
    """``messages`` split before each message whose role is in ``starts``: a tool result is
    never split from the call it answers (tool messages start nothing)."""
    units: list[list[dict[str, Any]]] = []
    for message in messages:
        if not units or message.get("role") in starts:
            units.append([])
        units[-1].append(message)
    return units


def _cut_tool_outputs(
    messages: list[dict[str, Any]], limit: int, counter: Counter
) -> tuple[list[dict[str, Any]], int]:
    cut = 0
    out = []
    for message in messages:
        content = message.get("content")
        if message.get("role") == "tool" and isinstance(content, str) and counter(content) > limit:
            # Characters for ``limit`` tokens, by this content's own ratio.
            keep = max(len(content) * limit // max(counter(content), 1), 0)
            marker = TRUNCATED.format(cut=len(content) - keep)
            message = {**message, "content": content[:keep] + marker}
            cut += 1
        out.append(message)
    return out, cut
