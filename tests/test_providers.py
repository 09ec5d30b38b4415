"""Provider resilience with real workers: breakers, fallback, Retry-After, waits, rate limits.

A private fleet with two ``agents`` worker processes and the simulator serving providers
``a`` (first in the default chain), ``b`` and ``c`` (rate-limited to 60 requests a minute).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ops.simulator.faults import clear_faults, set_faults
from ops.stack import PoolSpec, Stack
from tasks.errors import RateLimitedError, RetryableProviderError
from tasks.llm import get_guard
from tests.conftest import Fleet, private_fleet

RESET_TIMEOUT = 3.0
FAIL_MAX = 3


def _providers(sim: str) -> str:
    common = {"fail_max": FAIL_MAX, "reset_timeout": RESET_TIMEOUT, "timeout": 5}
    return json.dumps(
        [
            {"name": "a", "base_url": f"{sim}/p/a/v1", "priority": 1, **common},
            {"name": "b", "base_url": f"{sim}/p/b/v1", "priority": 2, **common},
            {"name": "c", "base_url": f"{sim}/p/c/v1", "priority": 3, "rpm": 60, **common},
        ]
    )


@pytest.fixture(scope="module")
def pfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    def start(stack: Stack) -> None:
        stack.start_redis()
        sim = stack.start_simulator().removesuffix("/v1")
        stack.env_overrides = {
            "AGENTFLEET_PROVIDERS": _providers(sim),
            "AGENTFLEET_LLM_MAX_RETRIES": "4",
            "AGENTFLEET_RETRY_BACKOFF_BASE": "0.2",
            "AGENTFLEET_MAX_RETRY_COUNTDOWN": "5",
        }
        for _ in range(2):
            stack.start_worker(PoolSpec("agents", "threads", 100))
        stack.start_worker(PoolSpec("tools", "prefork", 2))
        stack.start_api()

    with private_fleet(Stack(Path(tmp_path_factory.mktemp("providers"))), start, 3) as fleet:
        yield fleet


@pytest.fixture
def sim(pfleet: Fleet) -> Iterator[str]:
    url = pfleet.stack.simulator_url.removesuffix("/v1")
    pfleet.sim.post("/_sim/reset")
    pfleet.redis.delete(*pfleet.redis.keys("af:provider:*") or ["-"])
    yield url
    pfleet.sim.post("/_sim/reset")


def _calls(fleet: Fleet, provider: str, since: float = 0.0) -> list[float]:
    reply = fleet.sim.get(f"/_sim/providers/{provider}/calls", params={"since": since})
    return list(reply.json()["times"])


def _state(fleet: Fleet, name: str) -> dict[str, object]:
    return next(p.model_dump() for p in fleet.client.providers() if p.name == name)


def _state_periods(fleet: Fleet, provider: str) -> list[tuple[str, float, float]]:
    """(state, from, to) of the provider's breaker, from the fleet's event stream."""
    events = [e for _, e in fleet.redis.xrange("af:events:providers") if e["provider"] == provider]
    ends = [float(e["at"]) for e in events[1:]] + [time.time()]
    return [(e["to"], float(e["at"]), end) for e, end in zip(events, ends, strict=True)]


def _run_all(fleet: Fleet, n: int, **kwargs: object) -> list[str]:
    return [fleet.client.create_run(f"hello {i}", **kwargs).id for i in range(n)]  # type: ignore[arg-type]


def test_breaker_opens_runs_fall_back_and_traffic_returns(
    pfleet: Fleet, sim: str, wait: Callable[..., None]
) -> None:
    fleet = pfleet
    set_faults(sim, "a", status=500)
    runs = [fleet.client.wait(r, timeout=60) for r in _run_all(fleet, 20)]
    assert [r.status for r in runs] == ["succeeded"] * 20
    assert {r.provider for r in runs} == {"b"}
    state = _state(fleet, "a")
    assert state["state"] in ("open", "half-open")
    assert state["opened_at"] is not None
    # Failures from all processes were counted: a opened after FAIL_MAX of them.
    assert len(_calls(fleet, "a")) >= FAIL_MAX

    # While a is open, more runs go to b; a sees nothing but bounded half-open probes.
    more = [fleet.client.wait(r, timeout=60) for r in _run_all(fleet, 30)]
    assert {r.provider for r in more} == {"b"}
    time.sleep(RESET_TIMEOUT + 0.5)  # span at least one half-open period under load
    more += [fleet.client.wait(r, timeout=60) for r in _run_all(fleet, 10)]
    assert all(r.status == "succeeded" for r in more)
    # Exactly, by the time each call was admitted and the fleet's breaker events:
    # nothing admitted while open, at most max_probes (1) per half-open period.
    periods = _state_periods(fleet, "a")
    assert [state for state, _, _ in periods][:2] == ["open", "half-open"]
    admitted = fleet.sim.get("/_sim/providers/a/calls").json()["admitted"]
    assert None not in admitted
    for state, start, end in periods:
        inside = [a for a in admitted if start < a < end]
        assert len(inside) <= (0 if state == "open" else 1), (state, start, end, inside)

    # a recovers: a probe succeeds, the breaker closes, traffic returns to a.
    clear_faults(sim, "a")

    def closed() -> bool:
        fleet.client.wait(fleet.client.create_run("probe").id, timeout=30)
        return _state(fleet, "a")["state"] == "closed"

    wait(closed, 30, "a's breaker to close", interval=0.5)
    back = [fleet.client.wait(r, timeout=60) for r in _run_all(fleet, 5)]
    assert {r.provider for r in back} == {"a"}
    events = fleet.redis.xrange("af:events:providers")
    transitions = [(e["provider"], e["from"], e["to"]) for _, e in events]
    # Each transition announced once for the fleet, not once per worker process.
    assert transitions.count(("a", "closed", "open")) == 1
    assert ("a", "half-open", "closed") in transitions


def test_retry_after_holds_every_call_to_the_provider(
    pfleet: Fleet, sim: str, wait: Callable[..., None]
) -> None:
    fleet = pfleet
    set_faults(sim, "a", status=429, retry_after=2)
    first = fleet.client.create_run("held", providers=["a"])
    wait(lambda: len(_calls(fleet, "a")) == 1, 20, "the first call")
    clear_faults(sim, "a")
    second = fleet.client.create_run("also held", providers=["a"])
    runs = [fleet.client.wait(r.id, timeout=30) for r in (first, second)]
    assert [r.status for r in runs] == ["succeeded", "succeeded"]
    times = _calls(fleet, "a")
    assert len(times) == 3
    assert times[1] - times[0] >= 2.0, times  # nothing reached a during the 2 s hold
    assert _state(fleet, "a")["state"] == "closed"  # a 429 is not a breaker failure


def test_every_provider_down_runs_wait_then_finish(
    pfleet: Fleet, sim: str, wait: Callable[..., None]
) -> None:
    fleet = pfleet
    for name in ("a", "b", "c"):
        set_faults(sim, name, status=503)
    ids = _run_all(fleet, 5)

    def all_waiting() -> bool:
        runs = [fleet.client.get_run(r) for r in ids]
        return all(r.status == "running" and r.waiting is not None for r in runs)

    wait(all_waiting, 30, "every run to wait on providers", interval=0.3)
    waiting = fleet.client.get_run(ids[0]).waiting
    assert waiting is not None
    assert waiting.reason == "providers_unavailable"
    time.sleep(2 * RESET_TIMEOUT)  # several half-open windows: nobody fails meanwhile
    assert {fleet.client.get_run(r).status for r in ids} == {"running"}
    for name in ("a", "b", "c"):
        clear_faults(sim, name)
    runs = [fleet.client.wait(r, timeout=60) for r in ids]
    assert [r.status for r in runs] == ["succeeded"] * 5
    assert all(r.waiting is None for r in runs)


def test_a_400_fails_the_run_at_once_and_leaves_the_breaker_closed(pfleet: Fleet, sim: str) -> None:
    fleet = pfleet
    set_faults(sim, "a", status=400)
    run = fleet.client.wait(fleet.client.create_run("bad").id, timeout=30)
    assert run.status == "failed"
    assert run.error is not None
    assert run.error.code == "provider_rejected"
    assert "a: HTTP 400" in run.error.message
    assert len(_calls(fleet, "a")) == 1
    assert len(_calls(fleet, "b")) == 0
    state = _state(fleet, "a")
    assert state["state"] == "closed"
    assert state["failures"] == 0


def test_rate_limit_is_shared_by_the_fleet(pfleet: Fleet, sim: str) -> None:
    fleet = pfleet
    n = 16
    runs = [fleet.client.wait(r, timeout=90) for r in _run_all(fleet, n, providers=["c"])]
    assert [r.status for r in runs] == ["succeeded"] * n
    times = _calls(fleet, "c")
    assert len(times) == n
    # 60/min with a 1 s burst: at most 2 at once, then one a second, whichever process
    # makes the call. Two processes each limiting on their own would take half as long.
    span = times[-1] - times[0]
    assert span >= n - 3, f"{n} calls in {span:.1f}s is faster than 60/min"
    assert all(len([t for t in times if s <= t < s + 1.0]) <= 2 for s in times)


def test_a_429_neither_counts_nor_clears_breaker_failures(pfleet: Fleet, sim: str) -> None:
    provider = next(p for p in pfleet.settings.provider_list if p.name == "a")
    guard = get_guard(pfleet.settings, provider)
    for _ in range(2):
        guard.failed(guard.admit(10), RetryableProviderError("a: HTTP 500", "a"))
    assert _state(pfleet, "a")["failures"] == 2
    guard.failed(guard.admit(10), RateLimitedError("a: HTTP 429", "a", None))
    state = _state(pfleet, "a")
    assert state["failures"] == 2
    assert state["state"] == "closed"
