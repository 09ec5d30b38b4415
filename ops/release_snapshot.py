"""Snapshot a release's Redis with work in flight, for the upgrade test.

``python -m ops.release_snapshot --checkout DIR --python DIR/.venv/bin/python --out FILE``
runs the release checked out in ``DIR`` (its own interpreter, its own command lines), leaves
work in every state an upgrade can meet, stops every process of that release, and writes
what Redis holds, key by key, to ``FILE``. ``tests/test_previous_release.py`` loads the file
into a new Redis and starts the current fleet on it: every run, tool call and batch the
previous release accepted must finish, read through the current API with a key the previous
release made.

The work left in flight:

- ``midway``: a run whose first step ran and published its tool call, which no ``tools``
  worker took before the release stopped (its step-2 chord is in Redis).
- ``queued-run``, ``queued-call``, ``queued-batch``, ``keyed-run``: accepted by the API
  (the last with an ``Idempotency-Key``) while no worker ran.
- ``sent-run``, ``sent-call``: sent with ``send_task`` by a service that does not import
  agentfleet.

Only this module's command lines know a release's layout (``--layout``): ``flat`` is the
release whose packages were installed as ``tasks``, ``workers``, ``producer``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

from agentfleet.tasks.settings import ENV_PREFIX
from ops.stack import ensure_redis_server, free_port, wait_for

#: The scripted prompt that makes the simulator call the calculator once, then answer.
TOOL_PROMPT = 'call calculator {"expression": "6*7"}'
#: What every run of :data:`TOOL_PROMPT` ends with.
TOOL_RESULT = "Results: calculator=42.0"
LAYOUTS = {
    "flat": {
        "app": "workers",
        "api": "producer.api:app",
        "cli": "producer.cli",
        "simulator": "ops.simulator",
    },
    "namespace": {
        "app": "agentfleet.workers",
        "api": "agentfleet.producer.api:app",
        "cli": "agentfleet.producer.cli",
        "simulator": "agentfleet.simulator",
    },
}


class Release:
    """The processes of one release, started from its checkout with its interpreter."""

    def __init__(self, checkout: Path, python: str, layout: str, workdir: Path) -> None:
        self.checkout = checkout
        self.python = python
        self.names = LAYOUTS[layout]
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        self.env.pop("PYTHONPATH", None)

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=self.checkout,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def worker(self, queue: str) -> subprocess.Popen[bytes]:
        return self.spawn(
            f"worker-{queue}",
            [
                *(self.python, "-m", "celery", "-A", self.names["app"], "worker"),
                *("-Q", queue, "-P", "threads", "-c", "4", "-n", f"{queue}-snapshot@%h"),
                *("--without-mingle", "--without-gossip", "--loglevel", "INFO"),
            ],
        )

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [self.python, "-m", self.names["cli"], *args],
            cwd=self.checkout,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """A warm shutdown, as ``docker stop`` does: what a worker holds goes back."""
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


@contextmanager
def release(args: argparse.Namespace, workdir: Path) -> Iterator[tuple[Release, str]]:
    port = free_port()
    redis_proc = subprocess.Popen(
        [
            *(ensure_redis_server(), "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(workdir.resolve())),
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    rel = Release(Path(args.checkout).resolve(), args.python, args.layout, workdir)
    try:
        wait_for(lambda: bool(redis.Redis.from_url(url).ping()), 15, "redis-server")
        rel.env["AGENTFLEET_REDIS_URL"] = url
        yield rel, url
    finally:
        rel.stop_all()
        os.killpg(redis_proc.pid, signal.SIGTERM)
        redis_proc.wait(timeout=30)


def _start_api(rel: Release) -> httpx.Client:
    sim_port, api_port = free_port(), free_port()
    rel.spawn(
        "simulator",
        [rel.python, "-m", rel.names["simulator"], "--host", "127.0.0.1", "--port", str(sim_port)],
    )
    rel.env["AGENTFLEET_SIMULATOR_URL"] = f"http://127.0.0.1:{sim_port}/v1"
    key = rel.cli("keys", "create", "--tenant", "upgrade")
    rel.spawn(
        "api",
        [
            *(rel.python, "-m", "uvicorn", rel.names["api"], "--host", "127.0.0.1"),
            *("--port", str(api_port), "--log-level", "warning"),
        ],
    )
    base = f"http://127.0.0.1:{api_port}"
    wait_for(lambda: httpx.get(f"{base}/healthz").status_code < 500, 30, "the API")
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _post(http: httpx.Client, path: str, body: dict[str, Any], **headers: str) -> str:
    response = http.post(path, json=body, headers=headers)
    response.raise_for_status()
    return str(response.json()["id"])


def _leave_work_in_flight(rel: Release, url: str) -> dict[str, Any]:
    http = _start_api(rel)
    work: dict[str, Any] = {"api_key": http.headers["Authorization"].removeprefix("Bearer ")}
    # A run that stops between its steps: the agents worker runs step 1 and publishes the
    # tool call; no tools worker ever takes it.
    agents = rel.worker("agents")
    midway = _post(http, "/v1/runs", {"input": TOOL_PROMPT, "max_steps": 4})

    def dispatched() -> bool:
        record = http.get(f"/v1/runs/{midway}").json()
        return bool(record["progress"]["tool_calls_total"]) and record["status"] == "running"

    wait_for(dispatched, 60, "the first step of the midway run")
    rel.stop(agents)
    runs = {"midway": midway}
    runs["queued-run"] = _post(http, "/v1/runs", {"input": TOOL_PROMPT, "max_steps": 4})
    runs["keyed-run"] = _post(
        http, "/v1/runs", {"input": "hello", "max_steps": 2}, **{"Idempotency-Key": "upgrade-1"}
    )
    calls = {
        "queued-call": _post(
            http,
            "/v1/tool-calls",
            {"id": "upgrade-call", "name": "calculator", "arguments": {"expression": "2+3"}},
        )
    }
    batches = {
        "queued-batch": _post(
            http, "/v1/batches", {"items": [{"input": TOOL_PROMPT}, {"input": "hello"}]}
        )
    }
    other = Celery("another-service", broker=url, backend=url)
    other.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    runs["sent-run"] = other.send_task(
        "agentfleet.run", kwargs={"request": {"input": TOOL_PROMPT}}, queue="agents"
    ).id
    call: dict[str, Any] = {
        "id": "upgrade-sent-call",
        "name": "calculator",
        "arguments": {"expression": "4*4"},
    }
    other.send_task("agentfleet.tool.call", kwargs={"request": call}, queue="tools")
    calls["sent-call"] = call["id"]
    http.close()
    work |= {"runs": runs, "tool_calls": calls, "batches": batches}
    return work


def _dump(url: str) -> list[dict[str, Any]]:
    """Every key with its type, value and time to live; bytes as base64."""
    # Replies are bytes (no decode_responses); redis-py types them as bytes or str.
    client: Any = redis.Redis.from_url(url)

    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode()

    keys: list[dict[str, Any]] = []
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key).decode()
        entry: dict[str, Any] = {"key": b64(key), "type": kind, "pttl": client.pttl(key)}
        if kind == "string":
            entry["value"] = b64(client.get(key) or b"")
        elif kind == "hash":
            entry["value"] = {b64(k): b64(v) for k, v in client.hgetall(key).items()}
        elif kind == "list":
            entry["value"] = [b64(v) for v in client.lrange(key, 0, -1)]
        elif kind == "set":
            entry["value"] = sorted(b64(v) for v in client.smembers(key))
        elif kind == "zset":
            entry["value"] = [[b64(m), s] for m, s in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            entry["value"] = [
                [eid.decode(), {b64(k): b64(v) for k, v in fields.items()}]
                for eid, fields in client.xrange(key)
            ]
        else:
            raise SystemExit(f"cannot snapshot a {kind} key: {key!r}")
        keys.append(entry)
    return keys


def restore(url: str, keys: list[dict[str, Any]]) -> int:
    """Write what :func:`_dump` read into the Redis at ``url``; returns the keys written.

    A key keeps its time to live; one that had less than a minute left (a worker's record of
    its tools) is left out, as it would have expired before anything read it."""
    client = redis.Redis.from_url(url)
    pipe = client.pipeline()
    written = 0
    for entry in keys:
        if 0 <= entry["pttl"] < 60_000:
            continue
        key, value = base64.b64decode(entry["key"]), entry["value"]
        kind = entry["type"]
        if kind == "string":
            pipe.set(key, base64.b64decode(value))
        elif kind == "hash":
            pipe.hset(
                key, mapping={base64.b64decode(k): base64.b64decode(v) for k, v in value.items()}
            )
        elif kind == "list":
            pipe.rpush(key, *(base64.b64decode(v) for v in value))
        elif kind == "set":
            pipe.sadd(key, *(base64.b64decode(v) for v in value))
        elif kind == "zset":
            pipe.zadd(key, {base64.b64decode(m): score for m, score in value})
        else:
            for eid, fields in value:
                pipe.xadd(
                    key,
                    {base64.b64decode(k): base64.b64decode(v) for k, v in fields.items()},
                    id=eid,
                )
        if entry["pttl"] > 0:
            pipe.pexpire(key, entry["pttl"])
        written += 1
    pipe.execute()  # one round trip, in one transaction
    client.close()
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.release_snapshot", description=__doc__)
    parser.add_argument("--checkout", required=True, help="the release's source tree")
    parser.add_argument("--python", required=True, help="an interpreter with it installed")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="flat")
    parser.add_argument("--release", required=True, help="the release's name or commit")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir", default=".agentfleet/release-snapshot")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with release(args, workdir) as (rel, url):
        work = _leave_work_in_flight(rel, url)
        rel.stop_all()
        keys = _dump(url)
    snapshot = {
        "release": args.release,
        "captured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tool_result": TOOL_RESULT,
        **work,
        "keys": keys,
    }
    Path(args.out).write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"{len(keys)} keys from release {args.release} -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
