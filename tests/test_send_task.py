"""Another service starts a run by task name, with its own Celery app and none of our code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import Fleet

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from celery import Celery

    url = sys.argv[1]
    app = Celery("other-service", broker=url, backend=url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    payload = json.loads(sys.argv[2])
    result = app.send_task("agentfleet.run", kwargs={"request": payload}, queue="agents")
    try:
        final = result.get(timeout=60)
    except Exception as exc:  # a run that did not succeed: RunFailed(message, record)
        final = exc.args[1]
    leaked = sorted(m for m in ("workers", "tasks", "producer", "ops") if m in sys.modules)
    print(json.dumps({"id": result.id, "final": final, "leaked": leaked}))
    """
)


def _send(fleet: Fleet, payload: dict[str, object]) -> dict[str, object]:
    # -I: isolated mode, no PYTHONPATH, and the working directory is not the repository.
    out = subprocess.run(
        [sys.executable, "-I", "-c", SCRIPT, fleet.stack.redis_url or "", json.dumps(payload)],
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
