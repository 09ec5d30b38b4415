"""Session fixtures: one real fleet (redis-server, simulator, workers, API) for the suite.

Tests that kill or reconfigure workers start their own :class:`ops.stack.Stack` instead.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from agentfleet.client import Client
from agentfleet.workers.factory import create_app
from ops.stack import PoolSpec, Proc, Stack, wait_for
from tests.docblocks import REPO, write_doc_modules

#: How the workers of the suite's fleets make LLM calls: ``TESTS_LLM_TRANSPORT=httpx`` (or
#: ``aiohttp``) runs the suite on that transport; unset, on the default
#: (``agentfleet.tasks.setting_groups.DEFAULT_LLM_TRANSPORT``). tests/test_llm_transport.py runs the
#: streaming, breaker, timeout and cancellation tests on both, whichever this is.
TRANSPORT_ENV = (
    {"AGENTFLEET_LLM_TRANSPORT": os.environ["TESTS_LLM_TRANSPORT"]}
    if os.environ.get("TESTS_LLM_TRANSPORT")
    else {}
)
#: The agents declared in a file that the shared fleet loads (tests/agents.py are in Python).
AGENT_FILE = Path(__file__).resolve().parent / "data" / "agents.yaml"
#: Worker settings for the shared fleet: small retry budgets so failure paths finish fast.
FLEET_ENV = {
    # The examples' agents and tools too: tests/test_examples.py runs examples/ on this fleet.
    "AGENTFLEET_TOOL_MODULES": "tests.tooling,examples.fleet_tools",
    "AGENTFLEET_AGENT_MODULES": "tests.agents,examples.fleet_agents",
    "AGENTFLEET_AGENT_FILES": str(AGENT_FILE),
    "AGENTFLEET_LLM_MAX_RETRIES": "1",
    "AGENTFLEET_RETRY_BACKOFF_BASE": "0.2",
    "AGENTFLEET_LLM_TIMEOUT": "20",
    "AGENTFLEET_CALLBACK_SECRET": "callback-test-secret",
    "AGENTFLEET_TENANT_LIMITS": '{"capped": 3}',
    **TRANSPORT_ENV,
    "AGENTFLEET_TENANT_NO_TRANSCRIPT": "untranscribed",
}
#: Short limits for fleets whose tests kill workers or lose messages, so that what a dead
#: worker held comes back in seconds instead of an hour. The arithmetic still holds:
#: llm_timeout 3 < step soft 4 < hard 5; longest countdown (the chord recovery check, 22 s:
#: Celery's chord dispatch claim lasts about 21 s) + hard 5 + margin 1 < visibility 30.
#: The watchdog takes a run for lost 5 s after its stage's time is up.
SHORT_LIMITS = {
    "AGENTFLEET_TOOL_MODULES": "tests.tooling",
    "AGENTFLEET_LLM_TIMEOUT": "3",
    "AGENTFLEET_STEP_SOFT_TIME_LIMIT": "4",
    "AGENTFLEET_STEP_TIME_LIMIT": "5",
    "AGENTFLEET_TOOL_SOFT_TIME_LIMIT": "4",
    "AGENTFLEET_TOOL_TIME_LIMIT": "5",
    "AGENTFLEET_MAX_RETRY_COUNTDOWN": "2",
    "AGENTFLEET_VISIBILITY_MARGIN": "1",
    "AGENTFLEET_VISIBILITY_TIMEOUT": "30",
    "AGENTFLEET_CHORD_RECOVERY_DELAY": "22",
    "AGENTFLEET_UNACKED_RESTORE_INTERVAL": "1",
    "AGENTFLEET_UNACKED_RESTORE_THROTTLE": "1",
    "AGENTFLEET_STALL_TIMEOUT": "5",
    "AGENTFLEET_WATCHDOG_INTERVAL": "1",
    **TRANSPORT_ENV,
}
FLEET_POOLS = (
    PoolSpec("agents", "threads", 100),
    PoolSpec("tools", "prefork", 4),
    PoolSpec("batch", "prefork", 1),
)


class Fleet:
    """Handles on a running fleet for tests."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.settings = stack.settings()
        self.app: Celery = create_app(self.settings)
        self.redis = redis.Redis.from_url(stack.redis_url or "", decode_responses=True)
        self.client = Client(stack.api_url, api_key=stack.api_key)
        self.http = httpx.Client(
            base_url=stack.api_url,
            timeout=10,
            headers={"Authorization": f"Bearer {stack.api_key}"},
        )
        self.sim = httpx.Client(base_url=stack.simulator_url.removesuffix("/v1"), timeout=10)

    def sim_stats(self) -> dict[str, Any]:
        return dict(self.sim.get("/_sim/stats").json())

    def run_keys(self) -> set[str]:
        keys = self.redis.scan_iter(match=f"{self.settings.redis.key_prefix}:run:*", count=1000)
        return {k for k in keys if k.count(":") == 2}

    def counts(self, prefix: str, keys: list[str]) -> list[int]:
        """The ``test:<prefix>:<key>`` counters the tools of ``tests.tooling`` keep."""
        values = self.redis.mget([f"test:{prefix}:{k}" for k in keys])
        return [int(v or 0) for v in values]

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of sample ``name`` with exactly ``labels`` in ``/metrics`` (None: none)."""
        for family in text_string_to_metric_families(self.http.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    def worker_of(self, queue: str) -> Proc:
        """A live worker process of the pool on ``queue``."""
        return next(
            p for p in self.stack.procs if p.name.startswith(f"worker-{queue}") and p.alive()
        )

    def client_of(self, tenant: str) -> Client:
        """A client with a new API key of ``tenant``."""
        return Client(self.stack.api_url, api_key=self.stack.make_api_key(tenant))

    def tagged(self, tag: str) -> int:
        """LLM calls the simulator saw from prompts carrying ``[[tag:<tag>]]``."""
        return int(self.sim_stats()["by_tag"].get(tag, 0))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``agentfleet ARGS`` against this fleet's API with its key."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "agentfleet.producer.cli",
                "--api",
                self.stack.api_url,
                "--api-key",
                self.stack.api_key,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def close(self) -> None:
        self.client.close()
        self.http.close()
        self.sim.close()
        self.redis.close()


@contextlib.contextmanager
def private_fleet(stack: Stack, start: Callable[[Stack], object], workers: int) -> Iterator[Fleet]:
    """Start ``stack`` with ``start``, wait for ``workers`` workers, hand out a :class:`Fleet`;
    afterwards (or if starting fails) stop every process."""
    try:
        start(stack)
        handle = Fleet(stack)
        try:
            stack.wait_workers(handle.app, workers)
            yield handle
        finally:
            handle.close()
    finally:
        stack.stop()


def with_pools(*pools: PoolSpec) -> Callable[[Stack], None]:
    """A ``start`` for :func:`private_fleet`: Redis, the simulator, ``pools`` and the API."""
    return lambda stack: stack.start_fleet(pools=pools)


def with_doc_modules(root: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` with the docs' tool and agent modules and agent files added (written into
    ``root``, which joins the path), so the docs' examples run the agents the docs define."""
    tools, agents, files = write_doc_modules(root)
    # This process loads them too: a Fleet's Celery app is made from the fleet's settings.
    sys.path.append(str(root))
    joined = {
        "AGENTFLEET_TOOL_MODULES": ",".join([env["AGENTFLEET_TOOL_MODULES"], *tools]),
        "AGENTFLEET_AGENT_MODULES": ",".join([env["AGENTFLEET_AGENT_MODULES"], *agents]),
        "AGENTFLEET_AGENT_FILES": ",".join([env["AGENTFLEET_AGENT_FILES"], *map(str, files)]),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(root)]),
    }
    return env | joined


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    env = with_doc_modules(tmp_path_factory.mktemp("doc-modules"), FLEET_ENV)
    stack = Stack(tmp_path_factory.mktemp("fleet"), env_overrides=env)
    with private_fleet(stack, with_pools(*FLEET_POOLS), len(FLEET_POOLS)) as handle:
        yield handle


@pytest.fixture
def wait() -> Callable[..., None]:
    """``wait(lambda: condition, timeout, what)``: poll observable state, never sleep blindly."""
    return wait_for


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests talk to loopback only; a proxy variable would route that traffic elsewhere.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
