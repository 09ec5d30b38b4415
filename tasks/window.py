"""Fitting a transcript into a run's context budget before each LLM call.

The system prompt and the run's own input always stay. What goes first, until the
transcript fits:

1. tool outputs longer than a quarter of the budget are cut, with a visible marker;
2. the oldest whole turns of the history before the input (a thread's earlier runs) go, a
   turn being a user message and everything up to the next one, so a tool call never loses
   its result;
3. then the oldest of the run's own steps before its last one (an assistant message with
   the tool results that answer it), for the same reason together.

Tokens are counted with the model's tokenizer where ``tiktoken`` is installed and knows the
model (``pip install tiktoken``; its encodings download on first use), otherwise estimated
at four bytes of JSON a token plus four a message, which overcounts English prose a little:
a budget is kept, never exceeded because of the estimate being low.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
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
    return Fitted(fitted, before, count(fitted, counter), dropped, truncated)


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
