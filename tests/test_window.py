"""Fitting a transcript into a context budget (no fleet needed; the fleet-level test, a long
thread trimmed on the wire, is in tests/test_agent_wire.py)."""

from __future__ import annotations

from typing import Any

from agentfleet.tasks import window


def _turn(n: int, tool_output: str = "ok") -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"question {n} " + "x" * 200},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": f"c{n}", "type": "function", "function": {"name": "f"}}],
        },
        {"role": "tool", "tool_call_id": f"c{n}", "content": tool_output},
        {"role": "assistant", "content": f"answer {n} " + "y" * 200},
    ]


def _tool_pairs_intact(messages: list[dict[str, Any]]) -> bool:
    asked = [c["id"] for m in messages for c in m.get("tool_calls") or []]
    answered = [m["tool_call_id"] for m in messages if m.get("role") == "tool"]
    return asked == answered


SYSTEM = {"role": "system", "content": "Be brief."}
INPUT = {"role": "user", "content": "the question now"}


def test_no_budget_or_a_fitting_transcript_is_left_alone() -> None:
    messages = [SYSTEM, *_turn(1), INPUT]
    assert window.fit(messages, 0, 5).messages is messages
    fitted = window.fit(messages, 100_000, 5)
    assert fitted.messages is messages
    assert not fitted.trimmed


def test_the_oldest_turns_go_whole_and_the_system_prompt_and_input_stay() -> None:
    history = [m for n in range(1, 6) for m in _turn(n)]
    messages = [SYSTEM, *history, INPUT]
    one_turn = window.count(_turn(1), window.estimate)
    budget = window.count([SYSTEM, INPUT], window.estimate) + 2 * one_turn + 10
    fitted = window.fit(messages, budget, len(messages) - 1)
    assert fitted.tokens <= budget < fitted.tokens_before
    assert fitted.messages[0] == SYSTEM
    assert fitted.messages[-1] == INPUT
    assert fitted.messages[1:-1] == _turn(4) + _turn(5)  # the two newest turns, whole
    assert fitted.dropped == 12
    assert _tool_pairs_intact(fitted.messages)


def test_a_huge_tool_output_is_cut_with_a_marker() -> None:
    messages = [INPUT, *_turn(1, tool_output="z" * 40_000)[1:]]
    fitted = window.fit(messages, 2000, 0)
    tool = next(m for m in fitted.messages if m["role"] == "tool")
    assert "characters cut to fit the context budget" in tool["content"]
    assert len(tool["content"]) < 3000
    assert fitted.truncated == 1
    assert fitted.dropped == 0
    assert fitted.tokens <= 2000


def test_the_runs_own_older_steps_go_before_its_last_one() -> None:
    steps = [m for n in range(1, 5) for m in _turn(n)[1:3]]  # assistant call + tool result
    messages = [SYSTEM, INPUT, *steps]
    last_step = steps[-2:]
    budget = window.count([SYSTEM, INPUT, *last_step], window.estimate) + 5
    fitted = window.fit(messages, budget, 1)
    assert fitted.messages == [SYSTEM, INPUT, *last_step]
    assert _tool_pairs_intact(fitted.messages)


def test_what_must_stay_stays_even_over_the_budget() -> None:
    messages = [SYSTEM, {"role": "user", "content": "w" * 10_000}]
    fitted = window.fit(messages, 300, 1)
    assert fitted.messages == messages
    assert fitted.tokens > 300


def test_the_estimate_is_four_bytes_a_token_and_an_unknown_model_uses_it() -> None:
    assert window.estimate("abcd") == 1
    assert window.estimate("abcde") == 2
    assert window.estimate("é" * 4) == 2  # bytes, not characters
    assert window.counter_for("sim-1") is window.estimate
