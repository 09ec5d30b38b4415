"""What docker-compose.yml and ops/k8s/ must agree with; ``tests/test_deploy.py`` checks them.

Each worker service runs :func:`ops.stack.worker_command` for one of :data:`SERVICE_POOLS`,
so the deployed command lines are the ones the tests start.

Stopping a worker (``docker stop``, a pod deleted by a scale-down) sends SIGTERM, waits the
grace period, then SIGKILLs. A SIGKILLed worker leaves the messages it held unacknowledged,
and Redis hands them out again only after the visibility timeout (an hour), so the grace
period must cover what the worker does after SIGTERM:

- **prefork** (``tools``, ``batch``): ``REMAP_SIGTERM=SIGQUIT`` makes SIGTERM a soft
  shutdown: running tasks get ``worker_soft_shutdown_timeout`` seconds to finish, then the
  worker cancels them and puts their messages back on the queue at once (cold shutdown).
  Grace: the soft-shutdown timeout plus :data:`COLD_SHUTDOWN_MARGIN`.
- **threads** (``agents``): a thread cannot be cancelled, so a cold shutdown cannot stop a
  running step (Celery raises ``NotImplementedError`` trying). SIGTERM stays a warm
  shutdown, which stops fetching, puts prefetched messages back and waits for the running
  steps. A step is bounded by its LLM call's HTTP timeout, below the step's soft limit;
  grace: the step's hard time limit.
"""

from __future__ import annotations

import math
from typing import Final

from agentfleet.tasks.settings import Settings
from ops.stack import PoolSpec

#: One Compose service (and one k8s Deployment) per pool; concurrency per process, sized
#: for a 2-core host (docs/performance.md: threads sustained the most LLM calls per core).
SERVICE_POOLS: Final[dict[str, PoolSpec]] = {
    "worker-agents": PoolSpec("agents", "threads", 500),
    "worker-tools": PoolSpec("tools", "prefork", 4),
    "worker-batch": PoolSpec("batch", "prefork", 2),
}
#: Seconds for a cold shutdown to cancel tasks, restore their messages and exit (measured:
#: under 2 s), with room to spare.
COLD_SHUTDOWN_MARGIN: Final = 15


def node_name(spec: PoolSpec) -> str:
    """``agents@<hostname>``: unique per container or pod, so replicas can be told apart."""
    return f"{spec.queue}@%h"


def shutdown_env(spec: PoolSpec) -> dict[str, str]:
    """Environment that sets what SIGTERM means to the worker of ``spec``."""
    return {"REMAP_SIGTERM": "SIGQUIT"} if spec.pool == "prefork" else {}


def grace_seconds(spec: PoolSpec, settings: Settings) -> int:
    """The stop grace period (``stop_grace_period``, ``terminationGracePeriodSeconds``)."""
    if spec.pool == "prefork":
        return math.ceil(settings.workers.worker_soft_shutdown_timeout + COLD_SHUTDOWN_MARGIN)
    return math.ceil(settings.limits.step_time_limit)


def ping_command(node: str, python: str = "python") -> list[str]:
    """A worker's health check: it answers a ping addressed to its own node name."""
    return [
        python,
        "-m",
        "celery",
        "-A",
        "agentfleet.workers",
        "inspect",
        "ping",
        "-d",
        node,
        "-t",
        "10",
    ]
