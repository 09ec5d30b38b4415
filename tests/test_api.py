"""The HTTP API: status codes, validation, and nothing enqueued by rejected requests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Fleet

#: docs/api.md, "HTTP API": "bodies over 1 MB (413)".
BODY_LIMIT = 1_000_000


def _snapshot(fleet: Fleet) -> tuple[set[str], int, int]:
    queued = sum(int(fleet.redis.llen(q)) for q in ("agents", "tools", "batch"))
    return fleet.run_keys(), queued, fleet.sim_stats()["requests"]


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({}, "input", "Field required"),
        ({"input": ""}, "input", "at least 1 character"),
        ({"input": "x", "max_steps": 0}, "max_steps", "greater than or equal to 1"),
        ({"input": "x", "max_steps": 51}, "max_steps", "the limit is 50"),
        ({"input": "x" * 100_001}, "input", "the limit is 100000"),
        ({"input": "x", "tools": ["nope"]}, "tools", "unknown tools: nope"),
        ({"input": "x", "tools": ["calculator"] * 33}, "tools", "the limit is 32"),
        ({"input": "x", "metadata": {"k": "v" * 5000}}, "metadata", "the limit is 4096"),
        ({"input": "x", "metadata": {"k": 1}}, "metadata", "valid string"),
        ({"input": "x", "surprise": 1}, "surprise", "Extra inputs are not permitted"),
        ({"input": 5}, "input", "input must be text, or an object"),
        ({"input": " \n\t "}, "input", "input is blank"),
        ({"input": "x", "stream": "yes"}, "stream", "valid boolean"),
        (
            {"input": "x", "model": "nosuchprovider:m"},
            "model",
            "no provider named 'nosuchprovider'",
        ),
    ],
)
def test_bad_run_bodies_are_422_and_enqueue_nothing(
    fleet: Fleet, body: dict[str, Any], field: str, says: str
) -> None:
    before = _snapshot(fleet)
    response = fleet.http.post("/v1/runs", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(field in map(str, d["loc"]) and says in d["msg"] for d in detail), detail
    assert _snapshot(fleet) == before


def test_not_json_is_422(fleet: Fleet) -> None:
    before = _snapshot(fleet)
    response = fleet.http.post(
        "/v1/runs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert _snapshot(fleet) == before


def test_oversized_body_is_413(fleet: Fleet) -> None:
    response = fleet.http.post("/v1/runs", json={"input": "x" * 1_100_000})
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


class _ChunkedUpload:
    """A JSON body of about ``size`` bytes sent in chunks (no Content-Length); counts how much
    of it the client got to send before the server stopped reading."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        yield b'{"input": "'
        chunk = b"x" * 65_536
        while self.sent < self.size:
            self.sent += len(chunk)
            yield chunk
        yield b'"}'


def _api_proc(fleet: Fleet) -> Path:
    """``/proc/<pid>`` of the fleet's API process (uvicorn)."""
    pid = next(p.popen.pid for p in fleet.stack.procs if p.name.startswith("api-") and p.alive())
    return Path(f"/proc/{pid}")


def _memory_kb(proc: Path, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak RSS) of a process, in kB."""
    for line in (proc / "status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in {proc}/status")


@pytest.mark.parametrize(
    ("method", "path", "authenticated"),
    [
        ("POST", "/v1/runs", True),
        ("POST", "/v1/runs", False),
        ("POST", "/v1/runs/nope/cancel", True),
        ("GET", "/healthz", False),
    ],
)
def test_chunked_body_over_the_limit_is_413_before_it_is_read(
    fleet: Fleet, method: str, path: str, authenticated: bool
) -> None:
    before = _snapshot(fleet)
    upload = _ChunkedUpload(40 * BODY_LIMIT)
    headers = {"content-type": "application/json"}
    if authenticated:
        headers["Authorization"] = f"Bearer {fleet.stack.api_key}"
    api = _api_proc(fleet)
    (api / "clear_refs").write_text("5")  # VmHWM starts again from VmRSS
    start_kb = _memory_kb(api, "VmRSS")
    with httpx.Client(base_url=fleet.stack.api_url, timeout=30) as client:
        response = client.request(method, path, content=upload, headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == f"request body is larger than {BODY_LIMIT} bytes"
    # The server stopped reading: the client could not send the whole body, and the API
    # never held it (a whole 40 MB body read into memory takes at least 40 MB more).
    assert upload.sent < upload.size
    grown_kb = _memory_kb(api, "VmHWM") - start_kb
    assert grown_kb * 1000 < upload.size / 4, f"API peak memory grew by {grown_kb} kB"
    assert _snapshot(fleet) == before


def _padded_run(size: int, tag: str) -> Iterator[bytes]:
    """A run body of exactly ``size`` bytes (JSON padded with spaces), in 64 kB chunks."""
    body = f'{{"input": "chunked upload", "metadata": {{"via": "{tag}"}}}}'.encode()
    body = body[:-1] + b" " * (size - len(body)) + b"}"
    assert len(body) == size
    return (body[i : i + 65_536] for i in range(0, size, 65_536))


def test_chunked_body_up_to_the_limit_is_accepted(fleet: Fleet) -> None:
    response = fleet.http.post(
        "/v1/runs",
        content=_padded_run(BODY_LIMIT, "chunks"),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 202, response.text
    assert fleet.client.wait(response.json()["id"], timeout=30).metadata == {"via": "chunks"}


def test_chunked_body_one_byte_over_the_limit_is_413(fleet: Fleet) -> None:
    before = _snapshot(fleet)
    response = fleet.http.post(
        "/v1/runs",
        content=_padded_run(BODY_LIMIT + 1, "over"),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413, response.text
    assert "larger than" in response.json()["detail"]
    assert _snapshot(fleet) == before


def test_unknown_ids_are_404(fleet: Fleet) -> None:
    for path in ("/v1/runs/nope", "/v1/tool-calls/nope"):
        response = fleet.http.get(path)
        assert response.status_code == 404
        assert "no " in response.json()["detail"]
        assert "'nope'" in response.json()["detail"]


def test_create_run_answers_202_with_links(fleet: Fleet) -> None:
    response = fleet.http.post("/v1/runs", json={"input": "links please", "metadata": {"a": "b"}})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["links"]["self"] == f"/v1/runs/{body['id']}"
    run = fleet.client.wait(body["id"], timeout=30)
    assert run.metadata == {"a": "b"}
    assert run.status == "succeeded"


def test_tool_call_round_trip_and_idempotent_id(fleet: Fleet) -> None:
    body = {
        "id": "api-once-1",
        "name": "record_sleep",
        "arguments": {"key": "api-once", "seconds": 0.1},
    }
    first = fleet.http.post("/v1/tool-calls", json=body)
    assert first.status_code == 202
    call = fleet.client.wait_tool_call("api-once-1", timeout=30)
    assert call.status == "succeeded"
    assert call.result is not None
    assert call.result["ok"] is True
    assert call.result["output"]["key"] == "api-once"
    again = fleet.http.post("/v1/tool-calls", json=body)
    assert again.status_code == 202
    assert again.json()["status"] == "succeeded"
    assert fleet.client.get_tool_call("api-once-1").result == call.result
    assert fleet.redis.get("test:completed:api-once") == "1"


def test_tool_call_result_carries_the_callers_id(fleet: Fleet) -> None:
    body = {"id": "own-id-1", "name": "calculator", "arguments": {"expression": "1+2"}}
    assert fleet.http.post("/v1/tool-calls", json=body).status_code == 202
    call = fleet.client.wait_tool_call("own-id-1", timeout=30)
    assert call.id == "own-id-1"
    assert call.result == {"id": "own-id-1", "name": "calculator", "ok": True, "output": 3.0}


def test_tool_that_raises_returns_structured_error(fleet: Fleet) -> None:
    accepted = fleet.client.create_tool_call("explode", {"message": "nope"})
    call = fleet.client.wait_tool_call(accepted.id, timeout=30)
    assert call.status == "failed"
    assert call.result == {
        "id": accepted.id,
        "name": "explode",
        "ok": False,
        "error": {"code": "tool_failed", "message": "tool 'explode' raised RuntimeError: nope"},
    }


def test_a_run_tool_call_with_malformed_arguments_shows_their_text(fleet: Fleet) -> None:
    # The model's arguments are no JSON: the tool refuses them, and the call shows what the
    # model wrote.
    prompt = '[[badargs]] call calculator {"expression": "1+1"}'
    run = fleet.client.wait(fleet.client.create_run(prompt).id, timeout=30)
    assert run.status == "succeeded"
    response = fleet.http.get(f"/v1/tool-calls/{run.id}-1-0")
    assert response.status_code == 200, response.text
    call = response.json()
    assert (call["status"], call["run_id"], call["arguments"]) == ("failed", run.id, "{not json")
    assert call["result"]["error"]["code"] == "invalid_tool_arguments"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "no_such_tool"}, "name"),
        ({"name": "calculator", "arguments": {"expr": "1"}}, "arguments"),
        ({"name": "calculator", "arguments": {"expression": 5}}, "arguments"),
        ({"name": "calculator", "id": "bad id with spaces"}, "id"),
    ],
)
def test_bad_tool_calls_are_422(fleet: Fleet, body: dict[str, Any], field: str) -> None:
    before = _snapshot(fleet)
    response = fleet.http.post("/v1/tool-calls", json=body)
    assert response.status_code == 422, response.text
    assert any(field in map(str, d["loc"]) for d in response.json()["detail"])
    assert _snapshot(fleet) == before


def test_tools_listing_has_schemas(fleet: Fleet) -> None:
    tools = {t.name: t for t in fleet.client.tools()}
    assert {"calculator", "current_time", "json_extract", "wait", "explode"} <= set(tools)
    calc = tools["calculator"].parameters
    assert calc["properties"]["expression"] == {
        "maxLength": 500,
        "title": "Expression",
        "type": "string",
    }
    assert calc["required"] == ["expression"]


def test_health_and_openapi(fleet: Fleet) -> None:
    assert fleet.client.health().ok is True
    spec = fleet.http.get("/openapi.json").json()
    assert {
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/tool-calls",
        "/v1/tool-calls/{call_id}",
        "/v1/tools",
        "/healthz",
    } <= set(spec["paths"])


def test_tool_call_killed_at_its_hard_limit_reads_as_failed(fleet: Fleet) -> None:
    accepted = fleet.client.create_tool_call("stubborn", {"seconds": 60})
    call = fleet.client.wait_tool_call(accepted.id, timeout=60)
    assert call.status == "failed"
    assert call.result is not None
    assert call.result["error"]["code"] == "tool_call_lost"
    assert "TimeLimitExceeded" in call.result["error"]["message"]


def test_tools_listing_is_the_fleets_view(fleet: Fleet, wait: Callable[..., None]) -> None:
    def view() -> dict[str, Any]:
        return dict(fleet.http.get("/v1/tools").json())

    wait(lambda: len(view().get("nodes", [])) == 3, 30, "the workers' tools in the API")
    listing = view()
    assert {q for n in listing["nodes"] for q in n["queues"]} == {"agents", "tools", "batch"}
    assert listing["mismatch"] is False
    tools = {t["name"]: t for t in listing["tools"]}
    # The shared fleet loads the same modules everywhere: each tool is on every worker.
    assert len(tools["record_sleep"]["nodes"]) == 3
    assert tools["record_sleep"]["queues"] == ["agents", "batch", "tools"]
    assert all(t["mismatches"] == [] and t["on_api"] for t in tools.values())
