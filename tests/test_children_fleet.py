"""Child runs on a private fleet whose ``agents`` pool has two threads: trees finish without
holding a worker while their children run, across the loss of the ``agents`` worker, and under
a tenant's cap on runs in flight, which a parent does not hold while its children run."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentfleet.client import Client, Run
from ops.stack import PoolSpec, Stack
from tests.conftest import FLEET_ENV, SHORT_LIMITS, Fleet, private_fleet
from tests.test_children import _call

AGENTS_2 = PoolSpec("agents", "threads", 2)
POOLS = (AGENTS_2, PoolSpec("tools", "prefork", 2), PoolSpec("batch", "prefork", 1))
ENV = {
    **SHORT_LIMITS,
    "AGENTFLEET_AGENT_MODULES": FLEET_ENV["AGENTFLEET_AGENT_MODULES"],
    "AGENTFLEET_TENANT_LIMITS": '{"capped": 2, "single": 1}',
}


@pytest.fixture(scope="module")
def two_threads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    stack = Stack(Path(tmp_path_factory.mktemp("children")), env_overrides=ENV)
    with private_fleet(stack, lambda s: s.start_fleet(pools=POOLS), len(POOLS)) as fleet:
        yield fleet


def _parent(tag: str, latency: float = 0.5) -> str:
    """A planner's prompt: three researchers in one step, each calling a tool."""
    return " ".join(
        _call(
            "researcher",
            {
                "input": f"[[latency:{latency}]] [[tag:{tag}]] "
                + _call("calculator", {"expression": f"{i}+1"})
            },
        )
        for i in range(3)
    )


def _finished(client: Client, ids: list[str], timeout: float) -> list[Run]:
    return [client.wait(run_id, timeout=timeout) for run_id in ids]


def _check_tree(fleet: Fleet, client: Client, parent: Run, tag: str) -> None:
    assert parent.status == "succeeded", parent
    assert parent.children is not None
    assert len(parent.children) == 3
    kids = [client.get_run(c) for c in parent.children]
    assert all(k.status == "succeeded" for k in kids), kids
    assert parent.tree_usage is not None
    assert parent.tree_usage.total_tokens == parent.usage.total_tokens + sum(
        k.usage.total_tokens for k in kids
    )
    # Each child answered with its tool's result; no tool ran twice, no child started twice.
    assert [k.result for k in kids] == [f"Results: calculator={i + 1}.0" for i in range(3)]
    for kid in kids:
        assert fleet.redis.hget(f"af:tool:{kid.id}-1-0", "attempts") == "1"
        kinds = [e.type for e in client.events(kid.id)]
        assert kinds.count("started") == 1


def test_ten_parents_of_three_children_on_two_threads(
    two_threads: Fleet, wait: Callable[..., None]
) -> None:
    fleet = two_threads
    tags = [f"ten-{i}" for i in range(10)]
    ids = [fleet.client.create_run(_parent(t), agent="planner").id for t in tags]
    parents = _finished(fleet.client, ids, 180)
    for parent, tag in zip(parents, tags, strict=True):
        _check_tree(fleet, fleet.client, parent, tag)
    # The children ran side by side: LLM calls of different children overlapped in time.
    kids = [fleet.client.get_run(c) for p in parents for c in p.children or []]
    spans = sorted((k.started_at or "", k.finished_at or "") for k in kids)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))


def test_the_agents_worker_killed_while_children_run(
    two_threads: Fleet, wait: Callable[..., None]
) -> None:
    fleet = two_threads
    tags = [f"kill-{i}" for i in range(4)]
    ids = [fleet.client.create_run(_parent(t, latency=2), agent="planner").id for t in tags]

    def children_running() -> bool:
        runs = [fleet.client.get_run(f"{i}-1-0") for i in ids[:2]]
        return all(r.status == "running" for r in runs)

    wait(children_running, 60, "children in their LLM calls")
    fleet.stack.kill(fleet.worker_of("agents"))
    fleet.stack.start_worker(AGENTS_2)
    parents = _finished(fleet.client, ids, 240)
    for parent, tag in zip(parents, tags, strict=True):
        _check_tree(fleet, fleet.client, parent, tag)


def test_a_tenant_capped_at_two_runs_five_trees(two_threads: Fleet) -> None:
    fleet = two_threads
    capped = fleet.client_of("capped")
    try:
        tags = [f"cap-{i}" for i in range(5)]
        ids = [capped.create_run(_parent(t), agent="planner").id for t in tags]
        parents = _finished(capped, ids, 240)
        for parent, tag in zip(parents, tags, strict=True):
            _check_tree(fleet, capped, parent, tag)
        assert fleet.redis.scard("af:tenant:capped:inflight") == 0
    finally:
        capped.close()


def test_a_parent_frees_its_tenants_slot_while_its_children_run(
    two_threads: Fleet, wait: Callable[..., None]
) -> None:
    """With a cap of one run, another run of the tenant starts while a parent's children run;
    the parent's next step then waits for the slot, and goes on with its children's results
    when the other run ends."""
    fleet = two_threads
    single = fleet.client_of("single")
    try:
        parent = single.create_run(_parent("free", latency=1.0), agent="planner")
        wait(lambda: single.get_run(f"{parent.id}-1-0").status == "running", 60, "a child")
        # Five rounds of a tool call, each answered in 2.5 s: it holds the slot about 15 s.
        slow = "[[latency:2.5]] [[rounds:5]] " + _call("calculator", {"expression": "1+1"})
        other = single.wait(single.create_run(slow).id, timeout=120)
        done = single.wait(parent.id, timeout=120)
        _check_tree(fleet, single, done, "free")
        ended = [str(single.get_run(c).finished_at) for c in done.children or []]
        assert other.status == "succeeded", other
        # The other run had the slot the parent freed: it started before the children ended,
        # and held it as they ended, so the parent's last step waited for it.
        assert str(other.started_at) < min(ended)
        assert max(ended) < str(other.finished_at) < str(done.finished_at)
        assert fleet.redis.scard("af:tenant:single:inflight") == 0
        assert fleet.redis.zcard("af:tenant:single:waiting") == 0
    finally:
        single.close()


def test_child_ids_are_the_parents_call_ids(two_threads: Fleet) -> None:
    run = two_threads.client.wait(
        two_threads.client.create_run(_parent("ids"), agent="planner").id, timeout=120
    )
    calls = [two_threads.client.get_tool_call(c) for c in run.children or []]
    assert [c.run_id for c in calls] == [run.id] * 3
    assert all(c.status == "succeeded" for c in calls)
    assert all(json.loads(json.dumps(c.result))["ok"] for c in calls)
