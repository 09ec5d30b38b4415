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

from agentfleet.simulator.faults import clear_faults, set_faults
from agentfleet.tasks.errors import RateLimitedError, RetryableProviderError
from agentfleet.tasks.llm import Target, call_chain, get_guard
from ops.stack import PoolSpec, Stack
from tests.conftest import TRANSPORT_ENV, Fleet, private_fleet

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
            **TRANSPORT_ENV,
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


def _retries(fleet: Fleet, run_id: str) -> int:
    """Retries the run's steps spent (after retryable provider errors)."""
    return int(fleet.redis.hget(f"af:run:{run_id}", "llm_retries") or 0)


def _openings(fleet: Fleet, provider: str, since: float) -> list[float]:
    """When the provider's breaker opened, from the fleet's event stream."""
    periods = _state_periods(fleet, provider)
    return [start for state, start, _ in periods if state == "open" and start >= since]


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


@pytest.mark.parametrize("status", [400, 422])
def test_a_request_error_fails_the_run_at_once_and_leaves_the_breaker_closed(
    pfleet: Fleet, sim: str, status: int
) -> None:
    fleet = pfleet
    set_faults(sim, "a", status=status)
    run = fleet.client.wait(fleet.client.create_run("bad").id, timeout=30)
    assert run.status == "failed"
    assert run.error is not None
    assert run.error.code == "provider_rejected"
    assert f"a: HTTP {status}" in run.error.message
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
    provider = next(p for p in pfleet.settings.llm.provider_list if p.name == "a")
    guard = get_guard(pfleet.settings, provider)
    for _ in range(2):
        guard.failed(guard.admit(10), RetryableProviderError("a: HTTP 500", "a"))
    assert _state(pfleet, "a")["failures"] == 2
    guard.failed(guard.admit(10), RateLimitedError("a: HTTP 429", "a", None))
    state = _state(pfleet, "a")
    assert state["failures"] == 2
    assert state["state"] == "closed"


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, None), (403, None), (404, "model_not_found"), (429, "insufficient_quota")],
)
def test_an_account_error_moves_the_call_to_the_next_provider(
    pfleet: Fleet, sim: str, status: int, code: str | None
) -> None:
    fleet = pfleet
    set_faults(sim, "a", status=status, code=code)
    run = fleet.client.wait(fleet.client.create_run("account").id, timeout=30)
    assert run.status == "succeeded", run.error
    assert run.provider == "b"
    assert (len(_calls(fleet, "a")), len(_calls(fleet, "b"))) == (1, 1)
    assert _retries(fleet, run.id) == 0  # moved on within the step, no backoff
    state = _state(fleet, "a")
    assert state["failures"] == 1  # counted against a's breaker


def test_an_account_error_with_no_provider_left_fails_the_run(pfleet: Fleet, sim: str) -> None:
    fleet = pfleet
    set_faults(sim, "a", status=401)
    set_faults(sim, "b", status=429, code="insufficient_quota")
    alone = fleet.client.wait(fleet.client.create_run("a only", providers=["a"]).id, timeout=30)
    both = fleet.client.wait(fleet.client.create_run("a, b", providers=["a", "b"]).id, timeout=30)
    for run in (alone, both):
        assert run.status == "failed"
        assert run.error is not None
        assert run.error.code == "provider_account_error"
        assert "a: HTTP 401" in run.error.message
        assert _retries(fleet, run.id) == 0
    assert both.error is not None
    assert "b: insufficient quota" in both.error.message
    assert (len(_calls(fleet, "a")), len(_calls(fleet, "b"))) == (2, 1)  # never retried
    assert _state(fleet, "a")["failures"] == 2
    assert _state(fleet, "b")["failures"] == 1


def test_a_5xx_moves_the_call_to_the_next_provider_in_the_same_step(
    pfleet: Fleet, sim: str
) -> None:
    fleet = pfleet
    set_faults(sim, "a", status=500)
    run = fleet.client.wait(fleet.client.create_run("fall back").id, timeout=30)
    assert run.status == "succeeded", run.error
    assert run.provider == "b"
    assert (len(_calls(fleet, "a")), len(_calls(fleet, "b"))) == (1, 1)
    assert _retries(fleet, run.id) == 0  # no backoff between a's failure and b
    assert _state(fleet, "a")["failures"] == 1


def test_a_step_tries_the_whole_chain_before_it_backs_off(
    pfleet: Fleet, sim: str, wait: Callable[..., None]
) -> None:
    fleet = pfleet
    for name in ("a", "b"):
        set_faults(sim, name, status=503, retry_after=2)
    run_id = fleet.client.create_run("whole chain", providers=["a", "b"]).id
    wait(lambda: _retries(fleet, run_id) == 1, 20, "the first attempt to fail")
    for name in ("a", "b"):
        clear_faults(sim, name)
    run = fleet.client.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    # The first attempt tried a, then b, then backed off (as long as Retry-After asked);
    # the second found a healthy again.
    assert run.provider == "a"
    assert (len(_calls(fleet, "a")), len(_calls(fleet, "b"))) == (2, 1)
    assert _retries(fleet, run_id) == 1


def test_a_provider_is_not_tried_when_its_timeout_does_not_fit_in_the_step(
    pfleet: Fleet, sim: str
) -> None:
    set_faults(sim, "a", status=500)
    chain = [Target("a", "sim-1"), Target("b", "sim-1")]
    messages = [{"role": "user", "content": "hi"}]
    # b's timeout (5 s) does not fit in the 2 s the step has left once a failed.
    deadline = time.monotonic() + 2
    with pytest.raises(RetryableProviderError, match="a: HTTP 500"):
        call_chain(pfleet.settings, chain, messages, [], deadline=deadline)
    assert (len(_calls(pfleet, "a")), len(_calls(pfleet, "b"))) == (1, 0)


def test_nothing_reaches_an_open_provider_before_its_reset_timeout(
    pfleet: Fleet, sim: str, wait: Callable[..., None]
) -> None:
    fleet = pfleet
    set_faults(sim, "a", status=500)
    since = time.time()
    ids: list[str] = []

    def opened_three_times() -> bool:
        # A steady trickle of runs (on both agents processes) probes a as soon as it may be.
        ids.append(fleet.client.create_run(f"trickle {len(ids)}").id)
        return len(_openings(fleet, "a", since)) >= 3

    wait(opened_three_times, 60, "a's breaker to open three times", interval=0.1)
    runs = [fleet.client.wait(r, timeout=60) for r in ids]
    assert {r.status for r in runs} == {"succeeded"}
    openings = _openings(fleet, "a", since)
    log = fleet.sim.get("/_sim/providers/a/calls").json()
    calls = list(zip(log["times"], log["admitted"], strict=True))
    probes = [arrived for arrived, admitted in calls if admitted > openings[0]]
    assert len(probes) >= 2, calls  # the breaker half-opened between the openings
    for opened in openings:
        # Calls admitted before the breaker opened may still arrive after; none after it.
        early = [
            (arrived - opened, admitted - opened)
            for arrived, admitted in calls
            if admitted > opened and arrived < opened + RESET_TIMEOUT
        ]
        assert not early, f"opened at {opened}: (arrived, admitted) seconds after: {early}"


def test_a_refusal_waits_for_a_provider_that_may_serve_later(
    pfleet: Fleet, sim: str, wait: Callable[..., None]
) -> None:
    fleet = pfleet
    set_faults(sim, "a", status=401)
    b = next(p for p in fleet.settings.llm.provider_list if p.name == "b")
    guard = get_guard(fleet.settings, b)
    for _ in range(FAIL_MAX):
        guard.failed(guard.admit(10), RetryableProviderError("b: HTTP 500", "b"))
    assert _state(fleet, "b")["state"] == "open"
    run_id = fleet.client.create_run("a refuses, b is open", providers=["a", "b"]).id

    def waiting() -> bool:
        run = fleet.client.get_run(run_id)
        return run.waiting is not None and run.waiting.reason == "providers_unavailable"

    wait(waiting, 20, "the run to wait for b")
    run = fleet.client.wait(run_id, timeout=30)  # b half-opens after its reset timeout
    assert run.status == "succeeded", run.error
    assert run.provider == "b"
    assert _retries(fleet, run_id) == 0
