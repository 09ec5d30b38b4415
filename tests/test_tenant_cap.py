"""A tenant's cap on runs in flight holds under load; runs over it wait and then finish."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tests.conftest import Fleet

CAP = 3  # AGENTFLEET_TENANT_LIMITS of the session fleet: {"capped": 3}


def test_cap_holds_and_every_run_finishes(fleet: Fleet, wait: Callable[..., None]) -> None:
    with fleet.client_of("capped") as client:
        prompt = '[[latency:0.3]] call text_stats {"text": "capped run"}'
        run_ids = [client.create_run(prompt).id for _ in range(20)]
        batch_id = client.create_batch([{"input": f"[[latency:0.3]] b{i}"} for i in range(6)]).id
        run_keys = [fleet.settings.redis.key_prefix + f":run:{r}" for r in run_ids]

        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                pipe = fleet.redis.pipeline(transaction=False)
                for key in run_keys:
                    pipe.hget(key, "status")
                samples.append(sum(s == "running" for s in pipe.execute()))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            runs = [client.wait(r, timeout=120) for r in run_ids]
            batch = client.wait_batch(batch_id, timeout=120)
        finally:
            stop.set()
            sampler.join()

    assert [r.status for r in runs] == ["succeeded"] * 20
    assert batch.counts.succeeded == 6
    assert max(samples) <= CAP
    assert max(samples) == CAP  # the cap was reached, so it was what held them back
    inflight = fleet.redis.scard(f"{fleet.settings.redis.key_prefix}:tenant:capped:inflight")
    assert inflight == 0


def test_other_tenants_are_not_held_back(fleet: Fleet) -> None:
    with fleet.client_of("capped") as capped:
        blockers = [capped.create_run("[[latency:2]] slow").id for _ in range(CAP + 2)]
        free = fleet.client.create_run("quick").id
        assert fleet.client.wait(free, timeout=20).status == "succeeded"
        assert {capped.wait(b, timeout=60).status for b in blockers} == {"succeeded"}
