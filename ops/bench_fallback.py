"""How fast does a run reach the next provider when the first one fails?

``python -m ops.bench_fallback [--rounds 3] [--fail-max 5]``

Starts a private fleet (one ``agents`` worker, default settings) with providers ``a`` then
``b`` on the simulator, both with the default breaker. Each round starts with every breaker
closed and measures, from the moment a run is created through the HTTP API:

- floor: ``a`` healthy, the seconds until the run's call reaches ``a`` (what any run pays
  before its first LLM call: the API, the queue, the worker);
- fallback: ``a`` answering 500 to everything, the seconds until the run's first call reaches
  ``b``, and how many calls ``a`` got before it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from agentfleet.client import Client
from agentfleet.simulator.faults import set_faults
from agentfleet.tasks import keys
from ops.stack import PoolSpec, Stack, wait_for


def _providers(sim: str, fail_max: int) -> str:
    return json.dumps(
        [
            {"name": "a", "base_url": f"{sim}/p/a/v1", "priority": 1, "fail_max": fail_max},
            {"name": "b", "base_url": f"{sim}/p/b/v1", "priority": 2, "fail_max": fail_max},
        ]
    )


class _Round:
    """One measured run: the fleet's state is reset before it, the run is finished after."""

    def __init__(self, stack: Stack, client: Client, store: redis.Redis) -> None:
        self.sim = stack.simulator_url.removesuffix("/v1")
        self.client, self.store = client, store

    def _reset(self) -> None:
        httpx.post(f"{self.sim}/_sim/reset").raise_for_status()
        found = list(self.store.scan_iter(match=keys.provider(keys.DEFAULT_PREFIX, "*")))
        if found:
            self.store.delete(*found)

    def _calls(self, provider: str, since: float) -> list[float]:
        reply = httpx.get(f"{self.sim}/_sim/providers/{provider}/calls", params={"since": since})
        return list(reply.json()["times"])

    def first_call(self, provider: str, failing: str | None) -> tuple[float, int]:
        """Seconds from a run's creation to its first call at ``provider``; calls to
        ``failing`` (answering 500) before it."""
        self._reset()
        if failing:
            set_faults(self.sim, failing, status=500)
        created = time.time()
        run_id = self.client.create_run("fallback bench").id
        wait_for(lambda: bool(self._calls(provider, created)), 120, f"a call at {provider}")
        reached = self._calls(provider, created)[0]
        before = [t for t in self._calls(failing, created) if t < reached] if failing else []
        self.client.wait(run_id, timeout=60)
        return reached - created, len(before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench_fallback", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fail-max", type=int, default=5, help="breaker fail_max of a and b")
    args = parser.parse_args(argv)
    with Stack(Path(tempfile.mkdtemp(prefix="af-fallback-"))) as stack:
        stack.start_redis()
        sim = stack.start_simulator().removesuffix("/v1")
        stack.env_overrides = {"AGENTFLEET_PROVIDERS": _providers(sim, args.fail_max)}
        stack.start_worker(PoolSpec("agents", "threads", 100))
        stack.start_api()
        stack.wait_workers(stack.celery_app(), 1)
        store = redis.Redis.from_url(stack.redis_url or "", decode_responses=True)
        floors, fallbacks = [], []
        with Client(stack.api_url, api_key=stack.api_key) as client:
            bench = _Round(stack, client, store)
            bench.first_call("a", None)  # warm up the worker's clients and scripts
            print(f"providers a, b; breaker fail_max {args.fail_max}; other settings default")
            for i in range(args.rounds):
                floor, _ = bench.first_call("a", None)
                fallback, failed = bench.first_call("b", "a")
                floors.append(floor)
                fallbacks.append(fallback)
                print(
                    f"  round {i + 1}: floor (created -> call at healthy a) {floor:7.3f}s; "
                    f"a answering 500: created -> first call at b {fallback:7.3f}s "
                    f"after {failed} call(s) to a"
                )
        print(
            f"median: floor {statistics.median(floors):.3f}s, "
            f"fallback {statistics.median(fallbacks):.3f}s (max {max(fallbacks):.3f}s)"
        )
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
