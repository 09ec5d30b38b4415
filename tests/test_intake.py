"""Taking work in: one check of a request, whichever way it came, answering it typed."""

from __future__ import annotations

import pytest

from agentfleet.tasks import intake
from agentfleet.tasks.errors import InvalidRequest
from agentfleet.tasks.llm import resolve_chain
from agentfleet.tasks.models import BatchRequest, RunRequest, ToolCallItem
from agentfleet.tasks.settings import Settings


def test_a_run_is_the_same_whether_sent_as_json_or_parsed_by_the_api() -> None:
    settings = Settings()
    raw = {"input": "hi", "tools": ["calculator", "calculator"], "max_steps": 3}
    sent = intake.admit_run(raw, settings, check_callback=False)
    posted = intake.admit_run(RunRequest.model_validate(raw), settings, check_callback=True)
    assert sent == posted
    assert sent.chain == resolve_chain(settings, None)
    assert sent.tools() == ["calculator"]
    assert sent.tools(every_tool=["echo"]) == ["calculator"]  # named tools win


def test_a_run_naming_no_tools_gets_what_the_caller_says_every_tool_is() -> None:
    run = intake.admit_run({"input": "hi"}, Settings(), check_callback=False)
    assert run.tools(every_tool=["calculator"]) == ["calculator"]


def test_a_refused_run_names_every_problem_by_field() -> None:
    settings = Settings()
    with pytest.raises(InvalidRequest) as refused:
        intake.admit_run(
            {"input": "x", "max_steps": 999, "tools": ["nope"], "model": "no-such:model"},
            settings,
            check_callback=False,
        )
    fields = [field for field, _ in refused.value.problems]
    assert fields == ["max_steps", "tools", "model"]
    assert refused.value.message.startswith(
        f"max_steps: max_steps is 999; the limit is {settings.runs.max_steps_limit}; tools: "
    )
    assert refused.value.to_dict()["code"] == "invalid_request"


def test_json_that_breaks_the_schema_is_refused_with_its_location() -> None:
    with pytest.raises(InvalidRequest) as refused:
        intake.admit_run({"input": "   ", "stream": "yes"}, Settings(), check_callback=False)
    assert [field for field, _ in refused.value.problems] == ["input", "stream"]


def test_a_callback_url_is_refused_only_where_the_caller_checks_it() -> None:
    raw = {"input": "hi", "callback_url": "http://example.com/hook"}
    settings = Settings()
    assert settings.api.callback_secret is None
    intake.admit_run(raw, settings, check_callback=False)
    with pytest.raises(InvalidRequest) as refused:
        intake.admit_run(raw, settings, check_callback=True)
    assert [field for field, _ in refused.value.problems] == ["callback_url"]


def test_a_batch_keeps_its_items_in_order_with_runs_admitted() -> None:
    batch = intake.admit_batch(
        BatchRequest.model_validate(
            {
                "items": [
                    {"input": "a"},
                    {"type": "tool_call", "name": "calculator", "arguments": {"expression": "1"}},
                    {"type": "prompt", "input": "b"},
                ]
            }
        ),
        Settings(),
    )
    first, call, prompt = batch.items
    assert isinstance(first, intake.AdmittedRun)
    assert isinstance(call, ToolCallItem)
    assert isinstance(prompt, intake.AdmittedRun)
    assert (prompt.request.max_steps, prompt.tools()) == (1, [])


def test_a_batch_over_the_item_limit_still_names_its_callback_problem() -> None:
    request = BatchRequest.model_validate(
        {"items": [{"input": "a"}, {"input": "b"}], "callback_url": "http://example.com/hook"}
    )
    with pytest.raises(InvalidRequest) as refused:
        intake.admit_batch(request, Settings(max_batch_items=1))
    assert [field for field, _ in refused.value.problems] == ["items", "callback_url"]
