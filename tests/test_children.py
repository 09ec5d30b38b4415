"""Sub-agents as child runs, on the shared fleet: results (typed too) are the parent's tool
results, failures are errors the parent's model handles, usage rolls up, limits hold, and
cancelling a parent cancels its descendants. Child runs under worker loss and tenant caps are in
``test_children_fleet.py``."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from agentfleet.client import ApiError
from tests.conftest import Fleet


def _call(agent: str, arguments: dict[str, object]) -> str:
    """``call AGENT {arguments}`` for the simulator. The brackets of directives meant for the
    child are escaped in the JSON (the child's input has them), so the parent's script, which
    reads directives anywhere in its prompt, does not take them for its own."""
    return f"call {agent} {json.dumps(arguments).replace('[', chr(92) + 'u005b')}"


def test_a_parent_gets_its_childrens_results_and_their_usage(fleet: Fleet) -> None:
    prompt = " ".join(
        [
            _call("researcher", {"input": "[[reply:fact A]]"}),
            _call("researcher", {"input": _call("calculator", {"expression": "2*3"})}),
            _call("rater", {"title": "crash", "body": "it crashes"}),
        ]
    )
    run = fleet.client.wait(fleet.client.create_run(prompt, agent="planner").id, timeout=60)
    assert run.status == "succeeded", run
    assert run.result is not None
    assert run.result.count("; ") == 2, run
    first, second, third = run.result.removeprefix("Results: ").split("; ")
    assert first == 'researcher="fact A"'
    assert second == 'researcher="Results: calculator=6.0"'
    # A typed child's result is its JSON value.
    rated = json.loads(third.removeprefix("rater="))
    assert set(rated) == {"label", "confidence"}

    ids = [f"{run.id}-1-{i}" for i in range(3)]
    assert run.children == ids
    kids = [fleet.client.get_run(i) for i in ids]
    assert all(k.status == "succeeded" for k in kids)
    assert {(k.parent_id, k.root_id, k.depth) for k in kids} == {(run.id, run.id, 1)}
    assert kids[1].usage.llm_calls == 2  # the child called its own tool
    assert run.tree_usage is not None
    everyone = [run, *kids]
    assert run.tree_usage.llm_calls == sum(r.usage.llm_calls for r in everyone)
    assert run.tree_usage.total_tokens == sum(r.usage.total_tokens for r in everyone)
    kinds = [e.type for e in fleet.client.events(run.id)]
    assert kinds.count("child_run_created") == 3


def test_a_failed_child_is_an_error_for_the_parents_model(fleet: Fleet) -> None:
    prompt = _call("researcher", {"input": "[[error:400]] anything"})
    run = fleet.client.wait(fleet.client.create_run(prompt, agent="planner").id, timeout=60)
    assert run.status == "succeeded", run
    assert run.result is not None
    assert run.result.startswith("Results: researcher=error (")
    assert "the researcher run failed" in run.result
    child = fleet.client.get_run(f"{run.id}-1-0")
    assert child.status == "failed"


def test_limits_and_bad_calls_are_tool_errors(fleet: Fleet) -> None:
    # Five levels of a sub-agent calling itself: the fourth level is past the depth of 3.
    prompt = "[[reply:bottom]]"
    for _ in range(5):
        prompt = _call("recursive", {"input": prompt})
    run = fleet.client.wait(fleet.client.create_run(prompt, agent="recursive").id, timeout=90)
    assert run.status == "succeeded", run
    deepest = fleet.client.get_run(f"{run.id}-1-0-1-0-1-0")
    assert deepest.depth == 3
    assert deepest.result is not None
    assert "sub-agent runs may nest 3 levels deep" in deepest.result
    with pytest.raises(ApiError):
        fleet.client.get_run(f"{run.id}-1-0-1-0-1-0-1-0")  # never started

    # Nine calls in one step, eight allowed; an input the sub-agent refuses.
    calls = [_call("rater", {"title": 7})]
    calls += [_call("researcher", {"input": f"[[reply:r{i}]]"}) for i in range(8)]
    run = fleet.client.wait(fleet.client.create_run(" ".join(calls), agent="planner").id, 90)
    assert run.status == "succeeded", run
    parts = (run.result or "").removeprefix("Results: ").split("; ")
    assert parts[0].startswith("rater=error (subagent_refused): invalid call")
    assert parts[1:8] == [f'researcher="r{i}"' for i in range(7)]
    assert "a step may start 8 sub-agent runs" in parts[8]


def test_a_run_naming_unknown_subagents_is_refused(fleet: Fleet) -> None:
    response = fleet.http.post("/v1/runs", json={"input": "x", "subagents": ["nobody"]})
    assert response.status_code == 422
    assert "unknown agents: nobody" in response.text


def test_cancelling_a_parent_cancels_its_descendants(
    fleet: Fleet, wait: Callable[..., None]
) -> None:
    slow = _call("recursive", {"input": "[[latency:30]] slow"})
    run_id = fleet.client.create_run(_call("recursive", {"input": slow}), agent="recursive").id
    grandchild = f"{run_id}-1-0-1-0"
    wait(lambda: fleet.client.get_run(grandchild).status == "running", 30, "the grandchild")
    assert fleet.client.cancel(run_id).status == "cancelled"
    assert fleet.client.get_run(f"{run_id}-1-0").status == "cancelled"
    assert fleet.client.get_run(grandchild).status == "cancelled"


def test_a_runs_token_budget_covers_its_children(fleet: Fleet) -> None:
    # Four rounds of a child that uses 1,000 tokens, under a budget of 3,000 for the tree: the
    # parent alone (50 a call, with estimates of about 700) would stay within it.
    child = _call("researcher", {"input": "[[usage:1000,0]] go"})
    prompt = f"[[rounds:4]] [[usage:50,0]] {child}"
    run_id = fleet.client.create_run(prompt, agent="planner", max_total_tokens=3000).id
    run = fleet.client.wait(run_id, timeout=90)
    run = fleet.client.get_run(run_id)
    kids = [fleet.client.get_run(c) for c in run.children or []]
    refused = [r for r in (run, *kids) if r.error is not None and r.error.code == "budget_exceeded"]
    assert refused, (run, kids)
    assert run.tree_usage is not None
    # At most one call's overshoot past the budget: 1,000 tokens used beyond its estimate.
    assert run.tree_usage.total_tokens <= 3000 + 1000
    assert sum(k.usage.total_tokens for k in kids) < 4 * 1000
