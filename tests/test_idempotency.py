"""Idempotency-Key: one run per key, also when the same POST races itself."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import Fleet


def _post(fleet: Fleet, body: dict[str, object], key: str) -> httpx.Response:
    return httpx.post(
        f"{fleet.stack.api_url}/v1/runs",
        json=body,
        headers={"Authorization": f"Bearer {fleet.stack.api_key}", "Idempotency-Key": key},
        timeout=30,
    )


def test_same_key_twice_is_one_run(fleet: Fleet) -> None:
    body = {"input": "[[tag:idem-seq]] hello"}
    first, second = _post(fleet, body, "seq-1"), _post(fleet, body, "seq-1")
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert fleet.client.wait(first.json()["id"]).status == "succeeded"
    assert fleet.tagged("idem-seq") == 1


def test_same_key_sent_concurrently_is_one_run(fleet: Fleet) -> None:
    body = {"input": "[[tag:idem-race]] [[latency:0.3]] hello"}
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: _post(fleet, body, "race-1"), range(12)))
    assert {r.status_code for r in responses} == {202}
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert fleet.client.wait(ids.pop()).status == "succeeded"
    assert fleet.tagged("idem-race") == 1


def test_key_reused_with_another_body_is_refused(fleet: Fleet) -> None:
    assert _post(fleet, {"input": "one"}, "reuse-1").status_code == 202
    before = fleet.run_keys()
    other = _post(fleet, {"input": "two"}, "reuse-1")
    assert other.status_code == 422
    assert "different request" in other.json()["detail"]
    assert fleet.run_keys() == before


def test_keys_are_per_tenant(fleet: Fleet) -> None:
    other_key = fleet.stack.make_api_key("idem-other")
    mine = _post(fleet, {"input": "hi"}, "shared-key").json()["id"]
    theirs = httpx.post(
        f"{fleet.stack.api_url}/v1/runs",
        json={"input": "hi"},
        headers={"Authorization": f"Bearer {other_key}", "Idempotency-Key": "shared-key"},
    ).json()["id"]
    assert mine != theirs
