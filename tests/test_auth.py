"""API keys and tenants: no key is a 401, another tenant's IDs do not exist (404)."""

from __future__ import annotations

import httpx
import pytest

from agentfleet.client import ApiError
from agentfleet.producer.auth import hash_key, tenant_of
from agentfleet.tasks.settings import Settings
from tests.conftest import Fleet


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/runs"),
        ("GET", "/v1/runs/x"),
        ("POST", "/v1/runs/x/cancel"),
        ("GET", "/v1/runs/x/events"),
        ("POST", "/v1/tool-calls"),
        ("GET", "/v1/tool-calls/x"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches/x"),
        ("POST", "/v1/batches/x/cancel"),
        ("GET", "/v1/tools"),
        ("GET", "/v1/providers"),
    ],
)
def test_every_v1_route_needs_a_key(fleet: Fleet, method: str, path: str) -> None:
    bare = httpx.request(method, f"{fleet.stack.api_url}{path}", json={"input": "x"})
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"] == "Bearer"
    wrong = httpx.request(
        method,
        f"{fleet.stack.api_url}{path}",
        json={"input": "x"},
        headers={"Authorization": "Bearer af_not-a-key"},
    )
    assert wrong.status_code == 401
    assert wrong.json()["detail"] == "unknown API key"


def test_rejected_key_enqueues_nothing(fleet: Fleet) -> None:
    before = fleet.run_keys()
    response = httpx.post(f"{fleet.stack.api_url}/v1/runs", json={"input": "hello"})
    assert response.status_code == 401
    assert fleet.run_keys() == before


def test_keys_are_stored_hashed(fleet: Fleet) -> None:
    key = fleet.stack.make_api_key("hashcheck")
    stored = fleet.redis.hgetall(f"{fleet.settings.redis.key_prefix}:apikeys")
    assert stored[hash_key(key)] == "hashcheck"
    assert key not in stored
    assert key not in stored.values()


def test_another_tenants_run_is_not_found(fleet: Fleet) -> None:
    run_id = fleet.client.create_run("hello from default").id
    assert fleet.client.wait(run_id).status == "succeeded"
    with fleet.client_of("intruder") as other:
        for attempt in (
            lambda: other.get_run(run_id),
            lambda: other.cancel(run_id),
            lambda: list(other.events(run_id, reconnect=False)),
        ):
            with pytest.raises(ApiError) as err:
                attempt()
            assert err.value.status == 404


def test_tool_call_ids_are_per_tenant(fleet: Fleet) -> None:
    with fleet.client_of("tenant-a") as a, fleet.client_of("tenant-b") as b:
        a.create_tool_call("transform_text", {"text": "abc", "operation": "upper"}, call_id="mine")
        b.create_tool_call("transform_text", {"text": "xyz", "operation": "upper"}, call_id="mine")
        mine_a, mine_b = a.wait_tool_call("mine"), b.wait_tool_call("mine")
        assert mine_a.id == mine_b.id == "mine"
        assert mine_a.result is not None
        assert mine_b.result is not None
        assert (mine_a.result["output"], mine_b.result["output"]) == ("ABC", "XYZ")
        with fleet.client_of("tenant-c") as c, pytest.raises(ApiError) as err:
            c.get_tool_call("mine")
        assert err.value.status == 404


def test_configured_hashed_key_is_accepted(fleet: Fleet) -> None:
    settings = Settings(
        redis_url=fleet.settings.redis.redis_url, api_keys={hash_key("af_cfg"): "ops"}
    )
    assert tenant_of(fleet.redis, settings, "af_cfg") == "ops"
    assert tenant_of(fleet.redis, settings, "af_other") is None
