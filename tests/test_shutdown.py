"""Stopping a worker as Docker and Kubernetes do: SIGTERM to its main process, then a grace.

The workers run with the environment the deployment files give them (``ops.deploy``), so
these are the shutdowns ``docker stop`` and a KEDA scale-down cause.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import redis

from agentfleet.client import Client
from ops.deploy import COLD_SHUTDOWN_MARGIN, SERVICE_POOLS, shutdown_env
from ops.stack import PoolSpec, Proc, Stack

SOFT_SHUTDOWN = 2.0
#: A short tool hard limit keeps the lease a killed call leaves behind short too.
LIMITS = {"AGENTFLEET_TOOL_SOFT_TIME_LIMIT": "10", "AGENTFLEET_TOOL_TIME_LIMIT": "15"}


def _deployed_worker(stack: Stack, service: str) -> Proc:
    spec = SERVICE_POOLS[service]
    env = {
        **stack.env(),
        **shutdown_env(spec),
        "AGENTFLEET_WORKER_SOFT_SHUTDOWN_TIMEOUT": str(SOFT_SHUTDOWN),
    }
    return stack.start_worker(PoolSpec(spec.queue, spec.pool, 2), env)


def _sigterm(proc: Proc) -> float:
    """SIGTERM to the main process only (as ``docker stop`` does); seconds until it exits."""
    start = time.monotonic()
    os.kill(proc.popen.pid, signal.SIGTERM)
    proc.popen.wait(timeout=130)
    return time.monotonic() - start


def test_prefork_worker_requeues_a_running_call_after_the_soft_shutdown(
    tmp_path: Path, wait: Callable[..., None]
) -> None:
    with Stack(tmp_path, env_overrides=LIMITS) as stack:
        stack.start_redis()
        stack.start_api()
        doomed = _deployed_worker(stack, "worker-tools")
        app = stack.celery_app()
        stack.wait_workers(app, 1)
        broker = redis.Redis.from_url(stack.redis_url or "")
        with Client(stack.api_url, api_key=stack.api_key) as client:
            call = client.create_tool_call("wait", {"seconds": 8})
            wait(lambda: client.get_tool_call(call.id).status == "running", 20, "the call")

            took = _sigterm(doomed)
            assert doomed.popen.returncode == 0, doomed.tail()
            # It waited the soft shutdown for the call, then cancelled it: well inside the
            # grace period the deployment gives it, and before the 8 s call could finish.
            assert SOFT_SHUTDOWN <= took < SOFT_SHUTDOWN + COLD_SHUTDOWN_MARGIN
            assert took < 8
            # The message is back on its queue now, not an hour later (visibility timeout).
            assert broker.llen("tools") == 1
            assert broker.hlen("unacked") == 0

            stack.start_worker(PoolSpec("tools", "prefork", 2))
            done = client.wait_tool_call(call.id, timeout=60)
        assert done.status == "succeeded"
        assert done.result is not None
        assert done.result["ok"] is True


def test_threads_worker_finishes_running_steps_before_it_exits(
    tmp_path: Path, wait: Callable[..., None]
) -> None:
    with Stack(tmp_path) as stack:
        stack.start_redis()
        stack.start_simulator()
        stack.start_api()
        doomed = _deployed_worker(stack, "worker-agents")
        app = stack.celery_app()
        stack.wait_workers(app, 1)
        broker = redis.Redis.from_url(stack.redis_url or "")
        with Client(stack.api_url, api_key=stack.api_key) as client:
            run = client.create_run("[[latency:4]] a slow answer")
            wait(lambda: client.get_run(run.id).status == "running", 20, "the run to start")

            took = _sigterm(doomed)
            assert doomed.popen.returncode == 0, doomed.tail()
            # Warm shutdown: the step ran to its end (no thread can be cancelled), well within
            # the grace period of the agents pool.
            assert took < 4 + COLD_SHUTDOWN_MARGIN
            final = client.get_run(run.id)
        assert final.status == "succeeded", final
        assert broker.hlen("unacked") == 0
        assert broker.llen("agents") == 0
