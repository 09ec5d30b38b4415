"""An upgrade finishes what the previous release accepted.

``tests/data/previous-release.json`` is the Redis of the previous release (the commit it
names) stopped with work in every state an upgrade meets: a run between its steps with its
tool call still queued, runs, a tool call and a batch accepted by its API while no worker
ran, a run and a tool call sent by name by another service, an ``Idempotency-Key`` answer
and the API key it made (``python -m ops.release_snapshot`` wrote it; its docstring has the
command). This test loads it into a new Redis, starts the current fleet on it and reads
everything back through the current API with that key: the Redis layout, the queued
messages and the payloads of the previous release all still work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.release_snapshot import restore
from ops.stack import Stack, wait_for
from tests.conftest import FLEET_POOLS, Fleet, private_fleet

SNAPSHOT = Path(__file__).parent / "data" / "previous-release.json"


@pytest.fixture(scope="module")
def snapshot() -> dict[str, Any]:
    return dict(json.loads(SNAPSHOT.read_text()))


@pytest.fixture(scope="module")
def upgraded(
    tmp_path_factory: pytest.TempPathFactory, snapshot: dict[str, Any]
) -> Iterator[tuple[Fleet, httpx.Client]]:
    stack = Stack(tmp_path_factory.mktemp("upgrade"))

    def start(stack: Stack) -> None:
        url = stack.start_redis()
        assert restore(url, snapshot["keys"]) > 0
        stack.start_fleet(pools=FLEET_POOLS)

    with private_fleet(stack, start, len(FLEET_POOLS)) as fleet:
        # The key the previous release made, not one of this fleet's.
        http = httpx.Client(
            base_url=stack.api_url,
            headers={"Authorization": f"Bearer {snapshot['api_key']}"},
            timeout=10,
        )
        yield fleet, http
        http.close()


def _final(http: httpx.Client, path: str, done: set[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def final() -> bool:
        response = http.get(path)
        found.update(response.json() if response.status_code == 200 else {})
        return response.status_code == 200 and found.get("status") in done

    wait_for(final, 120, path)
    return found


def _reader(upgraded: tuple[Fleet, httpx.Client], name: str) -> httpx.Client:
    """Work sent by name has no tenant, so tenant ``default`` reads it (this fleet's key);
    work posted to the previous release's API is read with the key that posted it."""
    fleet, http = upgraded
    return fleet.http if name.startswith("sent-") else http


@pytest.mark.parametrize("name", ["midway", "queued-run", "sent-run"])
def test_a_run_of_the_previous_release_finishes_with_its_tool_result(
    upgraded: tuple[Fleet, httpx.Client], snapshot: dict[str, Any], name: str
) -> None:
    path = f"/v1/runs/{snapshot['runs'][name]}"
    run = _final(_reader(upgraded, name), path, {"succeeded", "failed"})
    assert run["status"] == "succeeded", run
    assert run["result"] == snapshot["tool_result"]
    assert run["progress"]["tool_calls_done"] == 1


def test_an_idempotency_key_of_the_previous_release_still_answers_the_same_run(
    upgraded: tuple[Fleet, httpx.Client], snapshot: dict[str, Any]
) -> None:
    _, http = upgraded
    run_id = snapshot["runs"]["keyed-run"]
    again = http.post(
        "/v1/runs",
        json={"input": "hello", "max_steps": 2},
        headers={"Idempotency-Key": "upgrade-1"},
    )
    assert again.status_code == 202, again.text
    assert again.json()["id"] == run_id
    run = _final(http, f"/v1/runs/{run_id}", {"succeeded", "failed"})
    assert run["status"] == "succeeded", run


@pytest.mark.parametrize(("name", "output"), [("queued-call", 5.0), ("sent-call", 16.0)])
def test_a_tool_call_of_the_previous_release_runs(
    upgraded: tuple[Fleet, httpx.Client], snapshot: dict[str, Any], name: str, output: float
) -> None:
    path = f"/v1/tool-calls/{snapshot['tool_calls'][name]}"
    call = _final(_reader(upgraded, name), path, {"succeeded", "failed"})
    assert call["status"] == "succeeded", call
    assert call["result"]["output"] == output


def test_a_batch_of_the_previous_release_completes(
    upgraded: tuple[Fleet, httpx.Client], snapshot: dict[str, Any]
) -> None:
    path = f"/v1/batches/{snapshot['batches']['queued-batch']}"
    batch = _final(upgraded[1], path, {"completed", "cancelled"})
    assert batch["status"] == "completed", batch
    assert batch["counts"]["succeeded"] == 2, batch
