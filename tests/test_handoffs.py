"""Handoffs: the run goes on as the other agent, with its instructions and tools, and the record
and events show it."""

from __future__ import annotations

import json

from tests.conftest import Fleet


def test_a_handoff_makes_the_run_the_other_agents(fleet: Fleet) -> None:
    prompt = "My invoice is wrong. call transfer_to_billing {}"
    run_id = fleet.client.create_run(prompt, agent="frontdesk").id
    run = fleet.client.wait(run_id, timeout=60)
    assert run.status == "succeeded", run
    assert run.agent == "billing"
    assert run.result == 'Results: transfer_to_billing="handed over to billing"'
    record = fleet.redis.hgetall(f"af:run:{run_id}")
    assert json.loads(record["tools"]) == ["calculator"]
    # The model's second call had billing's instructions, after the handoff's result.
    messages = [json.loads(m) for m in fleet.redis.lrange(f"af:run:{run_id}:messages", 0, -1)]
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "tool", "system", "assistant"]
    assert messages[4]["content"].startswith("You are billing.")
    handoffs = [e.data for e in fleet.client.events(run_id) if e.type == "handoff"]
    assert handoffs == [{"run_id": run_id, "from": "frontdesk", "to": "billing", "step": 1}]


def test_only_the_first_handoff_of_an_answer_counts(fleet: Fleet) -> None:
    prompt = "call transfer_to_billing {} call transfer_to_billing {}"
    run = fleet.client.wait(fleet.client.create_run(prompt, agent="frontdesk").id, 60)
    assert run.status == "succeeded", run
    assert run.result == (
        'Results: transfer_to_billing="handed over to billing"; '
        "transfer_to_billing=error (handoff_refused): handed over to billing already"
    )
