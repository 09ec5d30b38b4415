"""Batches: 1,000 items as one chord; failures are named, never void the batch."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import Fleet


def _items() -> tuple[list[dict[str, object]], set[int]]:
    items: list[dict[str, object]] = []
    failing: set[int] = set()
    for i in range(1000):
        if i % 100 == 7:
            # The model keeps asking for tools past max_steps: this item fails.
            items.append({"input": '[[loop]] call calculator {"expression": "1"}', "max_steps": 1})
            failing.add(i)
        elif i % 10 == 3:
            items.append(
                {"type": "tool_call", "name": "calculator", "arguments": {"expression": f"{i}*2"}}
            )
        elif i % 10 == 5:
            items.append({"type": "prompt", "input": f"prompt {i}"})
        else:
            items.append({"input": f'call calculator {{"expression": "{i}+1"}}'})
    return items, failing


def test_a_thousand_item_batch(fleet: Fleet, wait: Callable[..., None]) -> None:
    items, failing = _items()
    started = time.monotonic()
    batch_id = fleet.client.create_batch(items, metadata={"suite": "batch"}).id
    accepted_in = time.monotonic() - started

    progress: list[int] = []

    def done() -> bool:
        batch = fleet.client.get_batch(batch_id, limit=0)
        progress.append(batch.completed)
        return batch.result is not None

    wait(done, 240, "the batch", interval=0.2)
    # completed/total rose while it ran, never backwards.
    assert progress == sorted(progress)
    assert any(0 < p < 1000 for p in progress)

    batch = fleet.client.get_batch(batch_id, limit=1000)
    assert batch.status == "completed"
    assert (batch.completed, batch.total) == (1000, 1000)
    assert batch.counts.failed == len(failing)
    assert batch.counts.succeeded == 1000 - len(failing)
    assert batch.result is not None
    named = {f["id"] for f in batch.result["failed_items"]}
    assert named == {batch.items[i].id for i in failing}
    assert all(f["error"]["code"] == "max_steps_exceeded" for f in batch.result["failed_items"])
    # Every item is a run or tool call of its own, with its own result.
    assert batch.items[1].result == "Results: calculator=2.0"
    assert batch.items[3].kind == "tool_call"
    assert batch.items[3].result == 6.0
    assert batch.items[5].result == "Echo: prompt 5"
    assert fleet.client.get_run(batch.items[1].id).status == "succeeded"
    assert fleet.client.get_tool_call(batch.items[3].id).status == "succeeded"
    assert accepted_in < 30  # sanity, not a benchmark: the request did not publish per item


def test_batch_from_jsonl_with_the_cli(fleet: Fleet, tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps({"input": f"line {i}"}) for i in range(5)) + "\n\n")
    done = fleet.cli("batch", "submit", str(path), "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert "completed  5/5 done: 5 succeeded, 0 failed, 0 cancelled" in done.stdout


def test_bad_batches_are_refused_and_enqueue_nothing(fleet: Fleet) -> None:
    before = fleet.run_keys()
    cases = [
        ({"items": []}, "items"),
        ({"items": [{"input": "ok"}, {"input": "x", "tools": ["no_such_tool"]}]}, "items.1.tools"),
        ({"items": [{"type": "tool_call", "name": "calculator", "arguments": {}}]}, "items.0"),
        ({"items": [{"type": "nope"}]}, "items"),
    ]
    for body, where in cases:
        response = fleet.http.post("/v1/batches", json=body)
        assert response.status_code == 422, body
        assert where in json.dumps(response.json()), response.json()
    too_many = {"items": [{"input": "x"}] * (fleet.settings.api.max_batch_items + 1)}
    response = httpx.post(
        f"{fleet.stack.api_url}/v1/batches",
        json=too_many,
        headers={"Authorization": f"Bearer {fleet.stack.api_key}"},
        timeout=30,
    )
    assert response.status_code in (413, 422)
    assert fleet.run_keys() == before
    assert fleet.redis.llen("batch") == 0
