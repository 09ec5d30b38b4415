"""Provider outage under load: 500 runs while provider ``a`` goes down and comes back.

``python -m ops.chaos [--runs 500] [--rate 25] [--latency 0.2]``

Starts a private fleet (two ``agents`` worker processes, providers ``a`` then ``b`` on the
simulator), submits runs through the HTTP API at a steady rate, makes ``a`` answer 500 to
everything from 20 % to 60 % of the submission window, then prints how the runs ended, how
many calls reached ``a`` while its breaker was open (only half-open probes should), and run
latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import cast

import httpx
import redis

from agentfleet.client import Client
from agentfleet.simulator.faults import clear_faults, set_faults
from agentfleet.tasks import keys
from ops.stack import PoolSpec, Stack


def _providers(sim: str) -> str:
    common = {"fail_max": 5, "reset_timeout": 2.0, "timeout": 10}
    return json.dumps(
        [
            {"name": "a", "base_url": f"{sim}/p/a/v1", "priority": 1, **common},
            {"name": "b", "base_url": f"{sim}/p/b/v1", "priority": 2, **common},
        ]
    )


def _open_windows(client: redis.Redis, end: float) -> list[tuple[float, float]]:
    """Intervals during which ``a``'s breaker was open (from the fleet's event stream)."""
    windows, opened = [], None
    events = cast(
        list[tuple[str, dict[str, str]]], client.xrange(keys.provider_events(keys.DEFAULT_PREFIX))
    )
    for _, event in events:
        if event["provider"] != "a":
            continue
        at = float(event["at"])
        if event["to"] == "open":
            opened = at
        elif opened is not None:
            windows.append((opened, at))
            opened = None
    if opened is not None:
        windows.append((opened, end))
    return windows


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.chaos", description=__doc__)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=25.0, help="runs submitted per second")
    parser.add_argument("--latency", type=float, default=0.2, help="simulated LLM latency (s)")
    args = parser.parse_args(argv)
    with Stack(Path(tempfile.mkdtemp(prefix="af-chaos-"))) as stack:
        stack.start_redis()
        sim = stack.start_simulator(latency=args.latency).removesuffix("/v1")
        stack.env_overrides = {"AGENTFLEET_PROVIDERS": _providers(sim)}
        for _ in range(2):
            stack.start_worker(PoolSpec("agents", "threads", 200))
        stack.start_worker(PoolSpec("tools", "prefork", 2))
        stack.start_worker(PoolSpec("batch", "prefork", 1))
        stack.start_api()
        stack.wait_workers(stack.celery_app(), 4)
        store = redis.Redis.from_url(stack.redis_url or "", decode_responses=True)

        window = args.runs / args.rate
        outage = (0.2 * window, 0.6 * window)
        print(
            f"{args.runs} runs over {window:.0f}s; provider a down from "
            f"t={outage[0]:.0f}s to t={outage[1]:.0f}s"
        )

        def flip() -> None:
            time.sleep(outage[0])
            set_faults(sim, "a", status=500)
            time.sleep(outage[1] - outage[0])
            clear_faults(sim, "a")

        flipper = threading.Thread(target=flip, daemon=True)
        ids: list[str] = []
        with Client(stack.api_url, api_key=stack.api_key) as client:
            start = time.time()
            flipper.start()
            for i in range(args.runs):
                delay = start + i / args.rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                ids.append(client.create_run(f"chaos run {i}").id)
            flipper.join()
            runs = [client.wait(run_id, timeout=600, interval=0.5) for run_id in ids]
        end = time.time()

        def seconds(iso: str | None) -> float:
            return datetime.fromisoformat(iso).timestamp() if iso else 0.0

        latency = [seconds(r.finished_at) - seconds(r.created_at) for r in runs]
        by_status = {s: sum(r.status == s for r in runs) for s in ("succeeded", "failed")}
        windows = _open_windows(store, end)
        log_a = httpx.get(f"{sim}/_sim/providers/a/calls").json()
        calls_a, admitted_a = log_a["times"], log_a["admitted"]
        in_open = [t - lo for t in calls_a for lo, hi in windows if lo < t < hi]
        admitted_open = [a for a in admitted_a if any(lo < a < hi for lo, hi in windows)]
        served = {p: sum(r.provider == p for r in runs) for p in ("a", "b")}
        print(f"runs succeeded {by_status['succeeded']}, failed {by_status['failed']}")
        print(f"served by a {served['a']}, by b {served['b']}")
        print(
            f"breaker of a was open {len(windows)} time(s), "
            f"{sum(hi - lo for lo, hi in windows):.1f}s in all"
        )
        print(
            f"calls that reached a: {len(calls_a)}; admitted while its breaker was open: "
            f"{len(admitted_open)}"
        )
        if in_open:
            offsets = ", ".join(f"{o * 1000:.0f}" for o in sorted(in_open))
            print(
                f"  arrived while open but admitted before it opened: {len(in_open)} "
                f"(arrival after the open, ms: {offsets})"
            )
        print(
            f"run latency p50 {statistics.median(latency):.3f}s, "
            f"p99 {_percentile(latency, 0.99):.3f}s, max {max(latency):.3f}s"
        )
        return 0 if by_status["failed"] == 0 and not admitted_open else 1


if __name__ == "__main__":
    sys.exit(main())
