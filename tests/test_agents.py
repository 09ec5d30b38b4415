"""Agents defined in code and in files, run by name; typed results and their repair rounds.

The shared fleet loads tests/agents.py (``AGENTFLEET_AGENT_MODULES``) and tests/data/agents.yaml
(``AGENTFLEET_AGENT_FILES``) on the API and every worker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agentfleet.client import RunError
from agentfleet.tasks import keys
from agentfleet.tasks.agents import Agent, AgentRegistry, load_agent_file
from agentfleet.tasks.agents import registry as agents
from agentfleet.tasks.errors import ConfigError
from tests.agents import Verdict
from tests.conftest import Fleet

VERDICT = {"label": "bug", "confidence": 0.5}
VERDICT_SCHEMA = Verdict.model_json_schema()


def _listing(fleet: Fleet) -> dict[str, dict[str, Any]]:
    response = fleet.http.get("/v1/agents")
    assert response.status_code == 200, response.text
    return {a["name"]: a for a in response.json()["agents"]}


def _messages(fleet: Fleet, run_id: str) -> list[dict[str, Any]]:
    raw = fleet.redis.lrange(keys.run_messages(fleet.settings.redis.key_prefix, run_id), 0, -1)
    return [json.loads(m) for m in raw]


def _queued(fleet: Fleet) -> tuple[set[str], int]:
    return fleet.run_keys(), sum(int(fleet.redis.llen(q)) for q in ("agents", "tools", "batch"))


def test_agents_are_listed_with_their_schemas_and_workers(
    fleet: Fleet, wait: Callable[..., None]
) -> None:
    wait(lambda: _listing(fleet)["triage"]["nodes"], 30, "a worker to publish its agents")
    listed = _listing(fleet)
    assert {"triage", "echo", "strict_json", "summarize"} <= set(listed)
    triage = listed["triage"]
    assert triage["input_schema"]["properties"]["title"] == {"title": "Title", "type": "string"}
    assert triage["output_schema"]["properties"]["label"]["enum"] == ["bug", "question", "other"]
    assert triage["strict_output"] is True
    assert triage["model_settings"] == {"temperature": 0.0, "seed": 7}
    assert triage["tools"] == ["calculator"]
    assert triage["allow_overrides"] == ["max_steps", "model_settings"]
    assert triage["instructions"].startswith("(made per run by")
    assert triage["mismatches"] == []
    assert "agents" in {q for n in triage["nodes"] for q in n["queues"]}
    assert {n["digest"] for n in triage["nodes"]} == {triage["digest"]}
    summarize = listed["summarize"]
    assert summarize["source"].endswith("tests/data/agents.yaml")
    assert summarize["output_schema"]["required"] == ["summary"]
    assert summarize["input_schema"]["type"] == "string"
    assert [a.name for a in fleet.client.agents()] == sorted(listed)


def test_a_run_by_name_gets_the_agents_instructions_and_tools(fleet: Fleet) -> None:
    run = fleet.client.run("hello there", agent="echo", timeout=60)
    assert run.agent == "echo"
    assert run.result == "Echo: hello there"
    assert run.result_text is None  # not a typed run
    messages = _messages(fleet, run.id)
    assert messages[0] == {"role": "system", "content": "You repeat the user."}
    assert messages[1] == {"role": "user", "content": "hello there"}
    record = fleet.redis.hgetall(keys.run(fleet.settings.redis.key_prefix, run.id))
    assert record["agent"] == "echo"
    assert json.loads(record["tools"]) == []


def test_instructions_made_per_run_see_the_run_and_an_object_input_is_checked(
    fleet: Fleet,
) -> None:
    accepted = fleet.client.create_run(
        {"title": "Login fails", "body": "since Monday"},
        agent="triage",
        metadata={"team": "payments"},
    )
    messages = _messages(fleet, accepted.id)
    assert messages[0]["content"] == (
        f"You triage tickets for the payments team. Run {accepted.id}."
    )
    assert json.loads(messages[1]["content"]) == {"title": "Login fails", "body": "since Monday"}
    record = fleet.redis.hgetall(keys.run(fleet.settings.redis.key_prefix, accepted.id))
    assert json.loads(record["model_settings"]) == {"temperature": 0.0, "seed": 7}
    assert json.loads(record["output_schema"]) == VERDICT_SCHEMA
    assert record["max_steps"] == "3"
    fleet.client.wait(accepted.id, timeout=60)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"agent": "nobody", "input": "x"}, "agent", "no agent named 'nobody'"),
        ({"agent": "triage", "input": {"title": "t"}, "system": "s"}, "system", "allow_overrides"),
        ({"agent": "echo", "input": "x", "tools": ["calculator"]}, "tools", "allow_overrides"),
        ({"agent": "echo", "input": {"a": 1}}, "input", "takes text input"),
        ({"agent": "triage", "input": {"body": "no title"}}, "input", "title"),
        ({"input": {"a": 1}}, "input", "needs an agent"),
        ({"input": "x", "model_settings": {"temperature": 3}}, "temperature", "less than or"),
        ({"input": "x", "model_settings": {"warmth": 1}}, "warmth", "Extra inputs"),
        ({"input": "x", "model_settings": {"stop": ["a"] * 5}}, "stop", "1 to 4"),
        ({"input": "x", "output_schema": {"type": "nope"}}, "output_schema", "not a valid"),
        ({"input": "x", "output_schema": {"type": "string"}}, "output_schema", "root must be"),
        (
            {"input": "x", "output_schema": {"type": "object", "description": "x" * 20_000}},
            "output_schema",
            "the limit is",
        ),
    ],
)
def test_a_bad_agent_run_is_refused_naming_the_field_and_nothing_is_enqueued(
    fleet: Fleet, body: dict[str, Any], field: str, words: str
) -> None:
    before = _queued(fleet)
    response = fleet.http.post("/v1/runs", json=body)
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert any(field in p["loc"] and words in p["msg"] for p in problems), problems
    assert _queued(fleet) == before


def test_an_allowed_override_replaces_the_agents_setting(fleet: Fleet) -> None:
    accepted = fleet.client.create_run(
        {"title": "t"}, agent="triage", model_settings={"temperature": 1.5}, max_steps=2
    )
    record = fleet.redis.hgetall(keys.run(fleet.settings.redis.key_prefix, accepted.id))
    # Merged over the agent's settings, not instead of them.
    assert json.loads(record["model_settings"]) == {"temperature": 1.5, "seed": 7}
    assert record["max_steps"] == "2"
    fleet.client.wait(accepted.id, timeout=60)


def test_a_typed_run_answers_json_and_the_client_gives_the_callers_model(fleet: Fleet) -> None:
    prompt = f"[[reply:{json.dumps(VERDICT)}]]"
    run = fleet.client.run(prompt, output_schema=VERDICT_SCHEMA, timeout=60)
    assert run.result == VERDICT
    assert json.loads(run.result_text or "") == VERDICT
    verdict = fleet.client.run(prompt, output_type=Verdict, timeout=60)
    assert verdict == Verdict(label="bug", confidence=0.5)


def test_an_agent_declared_in_a_file_runs_typed(fleet: Fleet) -> None:
    run = fleet.client.run('[[reply:{"summary": "short"}]]', agent="summarize", timeout=60)
    assert run.result == {"summary": "short"}


def test_an_answer_that_never_matches_fails_output_invalid_with_the_answer_kept(
    fleet: Fleet,
) -> None:
    with pytest.raises(RunError) as failed:
        fleet.client.run("[[reply:not json]]", output_type=Verdict, timeout=60)
    run = failed.value.run
    assert run.error is not None
    assert run.error.code == "output_invalid"
    assert "not JSON" in run.error.message
    assert run.result is None
    assert run.result_text == "not json"
    # The first answer and two repair rounds (AGENTFLEET_MAX_OUTPUT_REPAIRS defaults to 2).
    assert run.usage.llm_calls == 3
    messages = _messages(fleet, run.id)
    repairs = [m for m in messages if m["role"] == "user" and "not accepted" in m["content"]]
    assert len(repairs) == 2
    # An agent's own number of repairs: strict_json has one.
    with pytest.raises(RunError) as agent_failed:
        fleet.client.run('[[reply:{"label": "bug"}]]', agent="strict_json", timeout=60)
    assert agent_failed.value.run.usage.llm_calls == 2
    assert agent_failed.value.run.error is not None
    assert "confidence" in agent_failed.value.run.error.message


# --- declarations ---------------------------------------------------------------------------


class Out(BaseModel):
    answer: str


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": "bad name"}, "must be 1-64"),
        ({"name": "a", "tools": ["no_such_tool"]}, "not a registered tool"),
        ({"name": "a", "allow_overrides": frozenset({"input"})}, "allow_overrides names input"),
        ({"name": "a", "model_settings": {"temperature": -1}}, "invalid model_settings"),
        ({"name": "a", "output_type": {"type": "array"}}, "root must be"),
        ({"name": "a", "max_steps": 0}, "max_steps must be at least 1"),
    ],
)
def test_a_wrong_declaration_fails_when_declared(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Agent(**kwargs, register=False)


def test_two_different_agents_cannot_share_a_name() -> None:
    registry = AgentRegistry()
    registry.add(Agent(name="twin", instructions="one", register=False))
    registry.add(Agent(name="twin", instructions="one", register=False))  # the same: fine
    with pytest.raises(ConfigError, match="two different agents are named 'twin'"):
        registry.add(Agent(name="twin", instructions="two", register=False))


def test_a_tool_given_by_its_function_is_named_and_the_digest_follows_the_definition() -> None:
    from agentfleet.tasks.tools.builtin import calculator

    agent = Agent(name="calc", tools=[calculator, "calculator"], output_type=Out, register=False)
    assert agent.tool_names == ["calculator"]
    other = Agent(name="calc", tools=[calculator], output_type=Out, register=False)
    assert agent.digest == other.digest
    changed = Agent(name="calc", tools=[calculator], register=False)
    assert changed.digest != agent.digest


def test_an_agent_file_with_a_wrong_entry_names_the_file_entry_and_field(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text(json.dumps({"agents": [{"name": "ok_one"}, {"name": "x", "temp": 1}]}))
    with pytest.raises(ConfigError, match=r"agents.json, agent 1: temp: Extra inputs"):
        load_agent_file(path)
    path.write_text("[1, 2")
    with pytest.raises(ConfigError, match="cannot read agent file"):
        load_agent_file(path)
    agents.remove("ok_one")
