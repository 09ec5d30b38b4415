"""The ``agentfleet`` command against the running API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from ops.stack import free_port
from tests.conftest import Fleet

#: The installed console script, as a user runs it.
AGENTFLEET = str(Path(sys.executable).with_name("agentfleet"))


def _agentfleet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENTFLEET, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=None if env is None else os.environ | env,
    )


def test_run_wait_status_and_tools(fleet: Fleet) -> None:
    done = fleet.cli("run", 'call calculator {"expression": "1+1"}', "--wait")
    assert done.returncode == 0, done.stderr
    assert "status    succeeded" in done.stdout
    assert "result    Results: calculator=2.0" in done.stdout
    run_id = done.stdout.split()[1]
    status = fleet.cli("--json", "status", run_id)
    assert status.returncode == 0
    assert json.loads(status.stdout)["progress"]["tool_calls_done"] == 1
    tools = fleet.cli("tools")
    assert tools.returncode == 0
    assert "calculator" in tools.stdout


def test_failed_run_and_unknown_id_exit_nonzero(fleet: Fleet) -> None:
    failed = fleet.cli("run", "[[error:400]] x", "--wait")
    assert failed.returncode == 1
    assert "error     provider_rejected" in failed.stdout
    missing = fleet.cli("status", "nope")
    assert missing.returncode == 2
    assert "HTTP 404" in missing.stderr


def test_unreachable_api_is_a_clear_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agentfleet.producer.cli", "--api", "http://127.0.0.1:9", "tools"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 3
    assert "cannot reach the API" in out.stderr


def test_providers_table(fleet: Fleet) -> None:
    out = fleet.cli("providers")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[:3] == ["provider", "state", "failures"]
    assert [r.split()[:2] for r in rows] == [["default", "closed"]]
    as_json = json.loads(fleet.cli("--json", "providers").stdout)
    assert as_json[0]["name"] == "default"
    assert as_json[0]["fail_max"] == 5


def test_run_watch_shows_events_and_progress(fleet: Fleet) -> None:
    out = fleet.cli("run", 'call calculator {"expression": "2+3"} then finish', "--watch")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    kinds = [line.split("]", 1)[1].split()[0] for line in lines if line.startswith("[step")]
    assert kinds[0] == "queued"
    assert kinds[-1] == "succeeded"
    assert "tool_call_finished" in kinds
    assert lines[-1].startswith("[step 2/10 | tools 1/1 |")
    assert "Results: calculator=5.0" in out.stdout  # the streamed answer


def test_watch_of_a_finished_run_replays_it(fleet: Fleet) -> None:
    run_id = fleet.client.create_run("hello watch").id
    fleet.client.wait(run_id)
    out = fleet.cli("--json", "watch", run_id)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events[0]["type"] == "queued"
    assert events[-1]["type"] == "succeeded"
    assert events[-1]["data"]["result"] == "Echo: hello watch"
    assert len({e["id"] for e in events}) == len(events)


def test_options_work_after_the_subcommand(fleet: Fleet) -> None:
    run_id = fleet.client.create_run("options after the subcommand").id
    fleet.client.wait(run_id, timeout=30)
    out = _agentfleet(
        "status", run_id, "--json", "--api", fleet.stack.api_url, "--api-key", fleet.stack.api_key
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["id"] == run_id
    unreachable = _agentfleet("tools", "--api", "http://127.0.0.1:9")
    assert unreachable.returncode == 3, unreachable.stderr


def test_refused_request_is_one_readable_line(fleet: Fleet) -> None:
    out = fleet.cli("run", "x", "--max-steps", "999")
    assert out.returncode == 2
    assert out.stderr == "agentfleet: HTTP 422: max_steps: max_steps is 999; the limit is 50\n"


def test_keys_with_redis_down_is_one_line() -> None:
    out = _agentfleet(
        "keys", "create", env={"AGENTFLEET_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    )
    assert out.returncode == 3
    assert out.stderr.startswith("agentfleet: cannot reach Redis: "), out.stderr
    assert len(out.stderr.splitlines()) == 1, out.stderr


def test_keys_with_a_bad_setting_is_one_line() -> None:
    out = _agentfleet("keys", "create", env={"AGENTFLEET_TOOL_TIME_LIMIT": "soon"})
    assert out.returncode == 2
    assert out.stderr.startswith("agentfleet: invalid setting AGENTFLEET_TOOL_TIME_LIMIT: ")
    assert len(out.stderr.splitlines()) == 1, out.stderr


def test_ctrl_c_in_watch_exits_cleanly(fleet: Fleet) -> None:
    run_id = fleet.client.create_run("[[latency:15]] a slow answer to interrupt").id
    watch = subprocess.Popen(
        [
            AGENTFLEET,
            "--api",
            fleet.stack.api_url,
            "--api-key",
            fleet.stack.api_key,
            "watch",
            run_id,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        assert "queued" in watch.stdout.readline()  # following the run's events by now
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
        fleet.client.cancel(run_id)
    assert "Traceback" not in err
    assert err == "agentfleet: interrupted\n"
    assert watch.returncode == 130


def test_wait_that_runs_out_exits_4(fleet: Fleet) -> None:
    out = fleet.cli("run", "[[latency:15]] too slow to wait for", "--wait", "--timeout", "1")
    run_id = out.stderr.split()[2]  # "agentfleet: run <id> still ... after 1.0s"
    fleet.client.cancel(run_id)
    assert out.returncode == 4, out.stderr
    assert re.fullmatch(f"agentfleet: run {run_id} still (queued|running) after 1.0s\n", out.stderr)


def test_agents_and_a_typed_run_by_agent_name(fleet: Fleet, tmp_path: Path) -> None:
    listed = fleet.cli("agents")
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:2] == ["triage", "typed"] for line in listed.stdout.splitlines())
    done = fleet.cli("run", "say it", "--agent", "echo", "--wait")
    assert done.returncode == 0, done.stderr
    assert "agent     echo" in done.stdout
    assert "result    Echo: say it" in done.stdout
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}}))
    typed = fleet.cli(
        "run", '[[reply:{"n": 4}]]', "--output-schema", str(schema), "--set", "seed=3", "--wait"
    )
    assert typed.returncode == 0, typed.stderr
    assert 'result    {"n": 4}' in typed.stdout
    triage = fleet.cli("run", '{"title": "t"}', "--agent", "triage", "--input-json")
    assert triage.returncode == 0, triage.stderr


def test_a_wrong_setting_or_input_is_refused_in_one_line(fleet: Fleet) -> None:
    unknown = fleet.cli("run", "x", "--set", "warmth=1")
    assert unknown.returncode == 2
    assert "model_settings.warmth" in unknown.stderr
    malformed = fleet.cli("run", "x", "--set", "temperature")
    assert malformed.returncode == 2
    assert "--set takes NAME=VALUE" in malformed.stderr
    not_object = fleet.cli("run", "[1]", "--agent", "triage", "--input-json")
    assert not_object.returncode == 2
    assert "--input-json takes a JSON object" in not_object.stderr
