"""A fleet whose broker, result backend and run store are all reached through Redis Sentinel."""

from __future__ import annotations

from pathlib import Path

import redis
from redis.sentinel import Sentinel

from agentfleet.client import Client
from ops.stack import PoolSpec, Stack, ensure_redis_server, free_port, wait_for

MASTER = "agentfleet"


def test_runs_go_through_sentinel(tmp_path: Path) -> None:
    overrides: dict[str, str] = {}
    with Stack(tmp_path, env_overrides=overrides) as stack:
        direct_url = stack.start_redis()
        master_port = int(direct_url.rsplit(":", 1)[1].split("/")[0])
        port = free_port()
        conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its file: it must be writable
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 5000\n"
        )
        stack.spawn("sentinel", [ensure_redis_server(), str(conf), "--sentinel"])
        sentinel = Sentinel([("127.0.0.1", port)], socket_timeout=1)
        wait_for(
            lambda: sentinel.discover_master(MASTER) == ("127.0.0.1", master_port),
            15,
            "Sentinel to know the master",
        )
        # Every process reaches Redis only through the Sentinel: one URL for all three.
        overrides["AGENTFLEET_REDIS_URL"] = f"sentinel://127.0.0.1:{port}/0"
        overrides["AGENTFLEET_REDIS_SENTINEL_MASTER"] = MASTER
        stack.start_simulator()
        stack.start_worker(PoolSpec("agents", "threads", 10))
        stack.start_worker(PoolSpec("tools", "prefork", 1))
        stack.start_api()
        stack.wait_workers(stack.celery_app(), 2)

        with Client(stack.api_url, api_key=stack.api_key) as client:
            run = client.create_run('call calculator {"expression": "6*7"}')
            final = client.wait(run.id, timeout=60)
        assert final.status == "succeeded"
        assert final.result == "Results: calculator=42.0"
        # It all landed on the master the Sentinel named.
        direct = redis.Redis.from_url(direct_url)
        assert direct.exists(f"af:run:{run.id}")
        assert direct.exists(f"celery-task-meta-{run.id}")
