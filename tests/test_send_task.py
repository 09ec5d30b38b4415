"""Another service starts a run by task name, with its own Celery app and none of our code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import Fleet

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from celery import Celery

    url = sys.argv[1]
    app = Celery("other-service", broker=url, backend=url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    task, queue, kwargs = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    result = app.send_task(task, kwargs=kwargs, queue=queue)
    try:
        final = result.get(timeout=60)
    except Exception as exc:  # a run that did not succeed: RunFailed(message, record)
        final = exc.args[1]
    OURS = ("agentfleet", "tasks", "workers", "producer", "ops")
    leaked = sorted(m for m in OURS if m in sys.modules)
    print(json.dumps({"id": result.id, "final": final, "leaked": leaked}))
    """
)


def _send(
    fleet: Fleet,
    payload: dict[str, object],
    task: str = "agentfleet.run",
    queue: str = "agents",
    keyword: str = "request",
) -> dict[str, object]:
    # -I: isolated mode, no PYTHONPATH, and the working directory is not the repository.
    kwargs = json.dumps({keyword: payload})
    out = subprocess.run(
        [sys.executable, "-I", "-c", SCRIPT, fleet.stack.redis_url or "", task, queue, kwargs],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_send_task_by_name_without_importing_agentfleet(fleet: Fleet) -> None:
    reply = _send(fleet, {"input": 'call calculator {"expression": "7*6"}', "max_steps": 4})
    assert reply["leaked"] == []
    final = reply["final"]
    assert isinstance(final, dict)
    assert final["id"] == reply["id"]
    assert final["status"] == "succeeded"
    assert final["result"] == "Results: calculator=42.0"
    # The run is also visible through the API under the same ID.
    assert fleet.client.get_run(str(reply["id"])).status == "succeeded"


def test_send_task_with_invalid_payload_records_a_failed_run(fleet: Fleet) -> None:
    reply = _send(fleet, {"input": "", "max_steps": 999})
    final = reply["final"]
    assert isinstance(final, dict)
    assert final["status"] == "failed"
    assert final["error"]["code"] == "invalid_request"
    assert "input" in final["error"]["message"]
    assert fleet.client.get_run(str(reply["id"])).status == "failed"


# ``request`` is the documented keyword of both entry tasks; ``payload`` is the tool call's
# older name, still accepted.
@pytest.mark.parametrize("keyword", ["request", "payload"])
def test_send_task_tool_call_takes_the_request_keyword(fleet: Fleet, keyword: str) -> None:
    call_id = f"sent-by-name-{keyword}"
    call = {"id": call_id, "name": "calculator", "arguments": {"expression": "6*7"}}
    reply = _send(fleet, call, task="agentfleet.tool.call", queue="tools", keyword=keyword)
    assert reply["leaked"] == []
    assert reply["final"] == {"id": call_id, "name": "calculator", "ok": True, "output": 42.0}
    assert fleet.client.get_tool_call(call_id).status == "succeeded"
