"""Runs that wait for a person: approvals of tool calls and questions, on the shared fleet.

A run waiting for a person holds no worker, no message, no lease and no tenant slot; the
decisions are recorded all or nothing and the run goes on once every pending call is decided.
Restarts of every worker and of Redis while a run waits are in ``test_waits_restart.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from agentfleet.client import ApiError, Client, Run
from agentfleet.tasks.errors import RunFailed
from tests.conftest import Fleet

TWO_DEPLOYS = (
    'call deploy {"service": "api", "version": "1.0"} '
    'call deploy {"service": "db", "version": "2.0"}'
)


def _waiting(
    fleet: Fleet, run_id: str, wait: Callable[..., None], client: Client | None = None
) -> Run:
    client = client or fleet.client
    wait(lambda: client.get_run(run_id).status == "waiting", 30, f"run {run_id} to wait")
    return client.get_run(run_id)


def _events(fleet: Fleet, run_id: str) -> list[tuple[str, dict[str, object]]]:
    return [(e.type, e.data) for e in fleet.client.events(run_id)]


def _holds_nothing(fleet: Fleet, run_id: str) -> None:
    """What a waiting run must not hold: a lease, a queued message, a place in the worklist."""
    assert not fleet.redis.exists(f"af:run:{run_id}:lease")
    assert fleet.redis.zscore("af:runs:active", run_id) is None
    queued = fleet.redis.lrange("agents", 0, -1)
    assert not any(run_id in message for message in queued)


def test_a_call_approved_with_edited_arguments_and_one_denied(
    fleet: Fleet, wait: Callable[..., None]
) -> None:
    run_id = fleet.client.create_run(TWO_DEPLOYS, tools=["deploy"]).id
    run = _waiting(fleet, run_id, wait)
    assert run.waiting is not None
    assert run.waiting.reason == "approval"
    pending = run.waiting.pending or []
    assert [(c.kind, c.name, json.loads(c.arguments)) for c in pending] == [
        ("approval", "deploy", {"service": "api", "version": "1.0"}),
        ("approval", "deploy", {"service": "db", "version": "2.0"}),
    ]
    assert [c.id for c in pending] == [f"{run_id}-1-0", f"{run_id}-1-1"]
    _holds_nothing(fleet, run_id)

    first, second = pending
    after_one = fleet.client.approve(
        run_id, first.id, arguments={"service": "api", "version": "1.1"}, message="patch it"
    )
    assert after_one.status == "waiting"  # one call is still pending
    assert fleet.redis.get("test:deploy:api:1.1") is None  # nothing runs before all decided
    fleet.client.deny(run_id, second.id, message="not on a Friday")

    done = fleet.client.wait(run_id, timeout=60)
    assert done.status == "succeeded", done
    # The model saw both: the approved call's output, with the edited arguments, and the denial.
    assert done.result == (
        'Results: deploy="deployed api 1.1"; '
        "deploy=error (denied): denied by the reviewer: not on a Friday"
    )
    assert fleet.redis.get("test:deploy:api:1.1") == "1"
    assert fleet.redis.get("test:deploy:api:1.0") is None
    assert fleet.redis.get("test:deploy:db:2.0") is None

    events = _events(fleet, run_id)
    kinds = [k for k, _ in events]
    assert kinds.index("approval_requested") < kinds.index("resumed") < kinds.index("succeeded")
    decided = [d for k, d in events if k == "approval_decided"]
    assert [(d["id"], d["decision"], d["edited"]) for d in decided] == [
        (first.id, "approve", True),
        (second.id, "deny", False),
    ]
    denied = fleet.client.get_tool_call(second.id)
    assert denied.status == "failed"
    assert denied.result is not None
    assert denied.result["error"]["code"] == "denied"
    approved = fleet.client.get_tool_call(first.id)
    assert approved.arguments == {"service": "api", "version": "1.1"}


def test_a_question_to_a_person(fleet: Fleet, wait: Callable[..., None]) -> None:
    prompt = 'call ask_human {"question": "Which colour?"}'
    run_id = fleet.client.create_run(prompt, tools=["ask_human"]).id
    run = _waiting(fleet, run_id, wait)
    assert run.waiting is not None
    assert run.waiting.reason == "input"
    (question,) = run.waiting.pending or []
    assert question.question == "Which colour?"
    _holds_nothing(fleet, run_id)

    fleet.client.answer(run_id, "blue")
    done = fleet.client.wait(run_id, timeout=60)
    assert done.status == "succeeded"
    assert done.result == 'Results: ask_human="blue"'
    kinds = [k for k, _ in _events(fleet, run_id)]
    assert "input_requested" in kinds
    assert "input_received" in kinds


def test_a_run_policy_makes_any_tool_wait_for_approval(
    fleet: Fleet, wait: Callable[..., None]
) -> None:
    prompt = 'call text_stats {"text": "a b"}'
    run_id = fleet.client.create_run(
        prompt, tools=["text_stats"], approval_required=["text_stats"]
    ).id
    run = _waiting(fleet, run_id, wait)
    assert run.waiting is not None
    (call,) = run.waiting.pending or []
    fleet.client.approve(run_id, call.id)
    done = fleet.client.wait(run_id, timeout=60)
    assert done.status == "succeeded"
    assert done.result is not None
    assert '"words": 2' in done.result


def test_decisions_that_nothing_waits_for_are_refused_and_change_nothing(
    fleet: Fleet, wait: Callable[..., None]
) -> None:
    run_id = fleet.client.create_run(TWO_DEPLOYS, tools=["deploy"]).id
    run = _waiting(fleet, run_id, wait)
    assert run.waiting is not None
    first, second = run.waiting.pending or []

    def refused(call: Callable[[], object]) -> int:
        with pytest.raises(ApiError) as caught:
            call()
        return caught.value.status

    # A call that is not pending, and one good decision beside it: neither is recorded.
    assert refused(lambda: fleet.client.approve(run_id, "no-such-call")) == 409
    both = [
        {"call_id": first.id, "approve": True},
        {"call_id": "no-such-call", "approve": True},
    ]
    assert refused(lambda: fleet.client.decide(run_id, both)) == 409  # type: ignore[arg-type]
    # Edited arguments the tool refuses: 422, naming the field.
    bad = fleet.http.post(
        f"/v1/runs/{run_id}/approvals",
        json={"decisions": [{"call_id": first.id, "approve": True, "arguments": {"v": 1}}]},
    )
    assert bad.status_code == 422
    assert "decisions.0.arguments" in bad.text
    # A question the run did not ask; another tenant's run.
    assert refused(lambda: fleet.client.answer(run_id, "yes")) == 409
    other = fleet.client_of("someone-else")
    try:
        assert refused(lambda: other.approve(run_id, first.id)) == 404
    finally:
        other.close()
    assert fleet.client.get_run(run_id).status == "waiting"
    assert "decisions" not in fleet.redis.hgetall(f"af:run:{run_id}")

    fleet.client.approve(run_id, first.id)
    # Deciding twice.
    assert refused(lambda: fleet.client.deny(run_id, first.id)) == 409
    fleet.client.deny(run_id, second.id)
    done = fleet.client.wait(run_id, timeout=60)
    assert done.status == "succeeded"
    # Deciding on a run that is not waiting.
    assert refused(lambda: fleet.client.approve(run_id, first.id)) == 409


def test_cancelling_a_waiting_run(fleet: Fleet, wait: Callable[..., None]) -> None:
    run_id = fleet.client.create_run(TWO_DEPLOYS, tools=["deploy"]).id
    _waiting(fleet, run_id, wait)
    assert fleet.client.cancel(run_id).status == "cancelled"
    # Its end is its Celery result, though no message of it was queued while it waited.
    with pytest.raises(RunFailed) as ended:
        fleet.app.AsyncResult(run_id).get(timeout=30)
    assert ended.value.record["status"] == "cancelled"


def test_waiting_runs_hold_no_tenant_slot(fleet: Fleet, wait: Callable[..., None]) -> None:
    # Tenant "capped" may have 3 runs in flight: 3 runs waiting for a person leave room.
    capped = fleet.client_of("capped")
    try:
        waiting = [capped.create_run(TWO_DEPLOYS, tools=["deploy"]).id for _ in range(3)]
        for run_id in waiting:
            _waiting(fleet, run_id, wait, capped)
        assert fleet.redis.scard("af:tenant:capped:inflight") == 0
        others = [capped.create_run(f"plain {i}").id for i in range(4)]
        for run_id in others:
            assert capped.wait(run_id, timeout=60).status == "succeeded"
        assert {r.id for r in capped.pending()} >= set(waiting)
        for run_id in waiting:
            run = capped.get_run(run_id)
            assert run.waiting is not None
            capped.decide(
                run_id,
                [{"call_id": c.id, "approve": False} for c in run.waiting.pending or []],
            )
        for run_id in waiting:
            assert capped.wait(run_id, timeout=60).status == "succeeded"
        assert fleet.redis.scard("af:tenant:capped:inflight") == 0
    finally:
        capped.close()


@pytest.mark.parametrize(
    ("policy", "status", "result"),
    [
        ("fail", "failed", None),
        ("deny", "succeeded", "Results: ask_human=error (denied): no one answered in time"),
        ("default", "succeeded", 'Results: ask_human="green"'),
    ],
)
def test_a_wait_times_out_by_its_policy(
    fleet: Fleet, wait: Callable[..., None], policy: str, status: str, result: str | None
) -> None:
    prompt = 'call ask_human {"question": "Which colour?"}'
    run_id = fleet.client.create_run(
        prompt,
        tools=["ask_human"],
        wait_timeout=1,
        on_wait_timeout=policy,
        wait_default="green",
    ).id
    run = _waiting(fleet, run_id, wait)
    assert run.waiting is not None
    assert run.waiting.timeout_at is not None
    done = fleet.client.wait(run_id, timeout=90)
    assert done.status == status
    if result is None:
        assert done.error is not None
        assert done.error.code == "wait_timeout"
    else:
        assert done.result == result


def test_the_cli_lists_and_decides_pending_runs(fleet: Fleet, wait: Callable[..., None]) -> None:
    run_id = fleet.client.create_run(TWO_DEPLOYS, tools=["deploy"]).id
    run = _waiting(fleet, run_id, wait)
    assert run.waiting is not None
    first, second = run.waiting.pending or []
    listed = fleet.cli("pending")
    assert listed.returncode == 0, listed.stderr
    assert first.id in listed.stdout
    assert "approval" in listed.stdout

    edited = fleet.cli(
        "approve", run_id, first.id, "--arguments", '{"service": "api", "version": "9"}'
    )
    assert edited.returncode == 0, edited.stderr
    assert "waiting" in edited.stdout
    denied = fleet.cli("deny", run_id, "--message", "no")  # every call still pending
    assert denied.returncode == 0, denied.stderr
    done = fleet.client.wait(run_id, timeout=60)
    assert done.result == (
        'Results: deploy="deployed api 9"; deploy=error (denied): denied by the reviewer: no'
    )
    again = fleet.cli("approve", run_id, second.id)
    assert again.returncode == 2
    assert "not waiting" in again.stderr
