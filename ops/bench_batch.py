"""How a 10,000-item batch is accepted and dispatched, next to the same work POSTed run by run.

    python -m ops.bench_batch [--items 10000]

One private Redis, the API and a ``batch`` worker, no ``agents`` worker: the items stay queued,
so what is timed is accepting and publishing, not running. Reported: the batch POST's latency,
the time until every item's message is on the ``agents`` queue, and, on the same fleet, the
time to POST the same number of runs one request at a time (8 client threads).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis

from ops.stack import PoolSpec, Stack, wait_for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench_batch", description=__doc__)
    parser.add_argument("--items", type=int, default=10_000)
    args = parser.parse_args(argv)
    n = args.items
    with Stack(Path(tempfile.mkdtemp(prefix="bench-batch-"))) as stack:
        stack.start_redis()
        stack.start_simulator()
        stack.start_worker(PoolSpec("batch", "prefork", 1))
        stack.start_api()
        stack.wait_workers(stack.celery_app(), 1)
        client = redis.Redis.from_url(stack.redis_url or "", decode_responses=True)
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        items = [{"input": f"item {i}"} for i in range(n)]

        started = time.perf_counter()
        response = httpx.post(
            f"{stack.api_url}/v1/batches", json={"items": items}, headers=headers, timeout=120
        )
        accepted = time.perf_counter() - started
        assert response.status_code == 202, response.text
        wait_for(lambda: client.llen("agents") >= n, 300, "the chord's messages", interval=0.02)
        published = time.perf_counter() - started
        client.delete("agents")

        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as http:

            def post(i: int) -> int:
                return http.post("/v1/runs", json={"input": f"run {i}"}).status_code

            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(post, range(n)))
            one_by_one = time.perf_counter() - started
        assert set(codes) == {202}
        client.close()

    print(f"{n} items")
    print(f"  batch POST answered in           {accepted:8.2f} s")
    print(f"  every item queued after          {published:8.2f} s")
    print(f"  {n} POST /v1/runs, 8 threads     {one_by_one:8.2f} s")
    print(f"  batch, accepted / one-by-one     {accepted / one_by_one:8.3f}x")
    print(f"  batch, all queued / one-by-one   {published / one_by_one:8.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
