"""Output schemas and the request body an LLM call sends (no fleet needed)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, field_validator

from agentfleet.tasks.errors import OutputInvalid
from agentfleet.tasks.llm import CallOptions, request_body
from agentfleet.tasks.models import ModelSettings
from agentfleet.tasks.output import OutputSpec, schema_problems, strict_schema
from agentfleet.tasks.setting_groups import ProviderConfig

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


class Answer(BaseModel):
    text: str
    score: int = 0

    @field_validator("text")
    @classmethod
    def _no_shouting(cls, value: str) -> str:
        if value.isupper():
            raise ValueError("no shouting")
        return value


def _provider(**fields: Any) -> ProviderConfig:
    return ProviderConfig(name="p", base_url="http://127.0.0.1:1/v1", **fields)


def test_a_strict_schema_closes_objects_and_requires_every_property() -> None:
    strict = strict_schema(Answer.model_json_schema())
    assert strict is not None
    assert strict["additionalProperties"] is False
    assert strict["required"] == ["text", "score"]
    assert "default" not in strict["properties"]["score"]
    nested = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/I"}}},
        "$defs": {"I": {"type": "object", "properties": {"n": {"type": "integer"}}}},
    }
    made = strict_schema(nested)
    assert made is not None
    assert made["$defs"]["I"] == {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "additionalProperties": False,
        "required": ["n"],
    }
    open_ended = {"type": "object", "additionalProperties": {"type": "string"}}
    assert strict_schema(open_ended) is None
    spec = OutputSpec("open", open_ended)
    assert spec.response_format()["json_schema"]["strict"] is False
    assert spec.response_format()["json_schema"]["schema"] == open_ended


def test_an_answer_is_checked_against_the_schema_and_the_model() -> None:
    spec = OutputSpec.of("answer", Answer)
    assert spec.check('{"text": "fine", "score": 2}') == {"text": "fine", "score": 2}
    with pytest.raises(OutputInvalid, match="not JSON"):
        spec.check("fine")
    with pytest.raises(OutputInvalid, match=r"\(root\): 'text' is a required property"):
        spec.check('{"score": 1}')
    with pytest.raises(OutputInvalid, match="score: 'x' is not of type 'integer'"):
        spec.check('{"text": "a", "score": "x"}')
    # The schema cannot say it; the pydantic model's own validator can.
    with pytest.raises(OutputInvalid, match="no shouting"):
        spec.check('{"text": "LOUD"}')
    # A schema given as JSON alone has no model to run.
    assert OutputSpec("answer", Answer.model_json_schema()).check('{"text": "LOUD"}')


def test_schema_problems_name_what_is_wrong() -> None:
    assert schema_problems({"type": "object"}, 1000) == []
    assert "not a valid JSON schema" in schema_problems({"type": 5}, 1000)[0]
    assert "root must be" in schema_problems({"type": "array"}, 1000)[0]
    assert "the limit is 10" in schema_problems({"type": "object"}, 10)[0]
    assert schema_problems([1], 1000) == ["must be a JSON schema object"]


def test_the_body_carries_settings_and_the_schema_as_the_provider_takes_them() -> None:
    settings = ModelSettings(
        temperature=0.5, max_tokens=20, tool_choice="required", reasoning_effort="low"
    )
    options = CallOptions(settings.body(), OutputSpec.of("answer", Answer))
    body = request_body(_provider(), "m", MESSAGES, [TOOL], options)
    assert body["temperature"] == 0.5
    assert body["max_tokens"] == 20
    assert body["tool_choice"] == "required"
    assert body["reasoning_effort"] == "low"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["messages"] == MESSAGES
    # Without tools, settings about tools would be refused by the provider: not sent.
    no_tools = request_body(_provider(), "m", MESSAGES, [], options)
    assert "tool_choice" not in no_tools
    assert "tools" not in no_tools
    # A provider without structured outputs or reasoning effort.
    plain = _provider(structured_outputs=False, reasoning_effort=False)
    body = request_body(plain, "m", MESSAGES, [TOOL], options)
    assert "response_format" not in body
    assert "reasoning_effort" not in body
    assert body["messages"][0]["content"].startswith("Be brief.\n\nGive your final answer")
    assert body["messages"][1:] == MESSAGES[1:]
    without_system = request_body(plain, "m", MESSAGES[1:], [], options)
    assert without_system["messages"][0]["role"] == "system"
    # No options: the body a plain run always sent.
    assert request_body(_provider(), "m", MESSAGES, [], None) == {
        "model": "m",
        "messages": MESSAGES,
    }
