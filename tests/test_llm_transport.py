"""The LLM clients' transports, over real HTTP to the simulator.

httpx: each thread gets its own pool and keeps reusing its own connection; pools of different
threads never share one; closing the transport closes every pool; the process's client uses it
unless threads are greenlets.

Both transports (``llm_transport``), call by call in this process: a streamed answer handed
over delta by delta in the calling thread, the same errors for the same failures, a call that
outlives its timeout, a caller that stops waiting cancelling its call, the breaker's outcomes
through the provider chain, and (aiohttp) a forked child making its own event loop.

The transport that is not the default, in real workers (the rest of the suite runs the
default): a streamed run's tokens, a run cancelled mid-answer, a hanging provider timed out
and fallen back from, and a breaker that opens.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx2
import pytest

from agentfleet.simulator.faults import clear_faults, set_faults
from agentfleet.tasks.errors import (
    PermanentProviderError,
    ProviderAccountError,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
    RunCancelled,
)
from agentfleet.tasks.llm import Target, call_chain, complete, get_client, get_guard
from agentfleet.tasks.llm._loop import tasks_in_flight
from agentfleet.tasks.llm._transport import PerThreadTransport, threads_are_greenlets
from agentfleet.tasks.setting_groups import DEFAULT_LLM_TRANSPORT, LlmTransport, ProviderConfig
from agentfleet.tasks.settings import Settings
from ops.stack import PoolSpec, Stack, wait_for
from tests.conftest import Fleet, private_fleet

TRANSPORTS: tuple[LlmTransport, ...] = ("aiohttp", "httpx")
#: Seconds between the chunks of a streamed answer: a long answer is still streaming when the
#: test acts on it.
TOKEN_DELAY = 0.02
#: An answer of 150 words streams for about 3 s.
LONG_REPLY = "[[reply:" + " ".join(f"word{i}" for i in range(150)) + "]]"

THREADS = 4
CALLS = 3


def _pool_connections(transport: PerThreadTransport) -> list[int]:
    """Connections each living thread's pool holds now, one entry per pool."""
    return [len(pool._pool.connections) for pool in transport._pools]


def test_each_thread_reuses_a_pool_of_its_own(fleet: Fleet) -> None:
    transport = PerThreadTransport(keepalive_expiry=30.0)
    client = httpx2.Client(base_url=fleet.stack.simulator_url, transport=transport, timeout=10)
    statuses: list[int] = []
    ports: dict[int, set[int]] = {}
    barrier = threading.Barrier(THREADS)
    done = threading.Barrier(THREADS + 1)
    release = threading.Event()

    def calls() -> None:
        barrier.wait()  # all threads at once: no thread can borrow another's idle connection
        mine: set[int] = set()
        for _ in range(CALLS):
            with client.stream("GET", "/models") as response:
                response.read()
                statuses.append(response.status_code)
                stream = response.extensions["network_stream"]
                mine.add(stream.get_extra_info("client_addr")[1])
        ports[threading.get_ident()] = mine
        done.wait()
        release.wait(timeout=30)  # alive until checked: a pool lives as long as its thread

    threads = [threading.Thread(target=calls) for _ in range(THREADS)]
    for t in threads:
        t.start()
    done.wait(timeout=30)
    assert statuses == [200] * (THREADS * CALLS)
    # One connection per thread, reused for every call of that thread, no two threads alike.
    assert all(len(mine) == 1 for mine in ports.values()), ports
    assert len(set().union(*ports.values())) == THREADS
    assert transport.pools == THREADS
    assert _pool_connections(transport) == [1] * THREADS
    release.set()
    for t in threads:
        t.join(timeout=30)

    client.close()
    assert transport.pools == 0
    with pytest.raises(RuntimeError, match="closed"):
        transport.handle_request(httpx2.Request("GET", f"{fleet.stack.simulator_url}/models"))


def test_plain_threads_are_not_greenlets() -> None:
    assert not threads_are_greenlets()


def test_the_providers_client_uses_it(fleet: Fleet) -> None:
    provider = ProviderConfig(name="transport-test", base_url=fleet.stack.simulator_url)
    client = get_client(provider)
    assert isinstance(client._client._transport, PerThreadTransport)


# --- both transports, call by call -------------------------------------------------------------
@pytest.fixture(scope="module")
def llm_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis and a simulator whose streamed answers come a chunk every ``TOKEN_DELAY`` s."""
    with Stack(Path(tmp_path_factory.mktemp("llm-transports"))) as stack:
        stack.start_redis()
        stack.start_simulator(token_delay=TOKEN_DELAY)
        yield stack


def _sim(stack: Stack) -> str:
    return stack.simulator_url.removesuffix("/v1")


def _provider(stack: Stack, name: str, **config: Any) -> ProviderConfig:
    """Provider ``name`` of the simulator (its faults are its own), cleared of faults."""
    clear_faults(_sim(stack), name)
    return ProviderConfig(name=name, base_url=f"{_sim(stack)}/p/{name}/v1", **config)


def _in_flight(stack: Stack) -> int:
    """Chat requests the simulator is answering now."""
    return int(httpx2.get(f"{_sim(stack)}/_sim/stats", timeout=5).json()["in_flight"])


def _say(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_streamed_answer_is_handed_over_delta_by_delta_in_the_calling_thread(
    llm_stack: Stack, transport: LlmTransport
) -> None:
    provider = _provider(llm_stack, f"stream-{transport}")
    deltas: list[tuple[str, str]] = []
    me = threading.current_thread().name
    on_delta = lambda text: deltas.append((text, threading.current_thread().name))  # noqa: E731
    words = " ".join(f"w{i}" for i in range(20))
    answer = complete(
        provider, _say(f"[[reply:{words}]]"), [], "sim-1", on_delta=on_delta, transport=transport
    )
    assert answer.content == words
    assert len(deltas) > 10  # one per token as they came, not the answer at once
    assert "".join(text for text, _ in deltas) == words
    assert {thread for _, thread in deltas} == {me}
    assert answer.completion_tokens > 0
    assert answer.finish_reason == "stop"


@pytest.mark.parametrize(
    ("faults", "expected", "args"),
    [
        ({"status": 400}, PermanentProviderError, 400),
        ({"status": 401}, ProviderAccountError, 401),
        ({"status": 429, "code": "insufficient_quota"}, ProviderAccountError, 429),
        ({"status": 429, "retry_after": 2}, RateLimitedError, 2.0),
        ({"status": 503, "retry_after": 1}, RetryableProviderError, 1.0),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_both_transports_raise_the_same_error_for_the_same_answer(
    llm_stack: Stack,
    faults: dict[str, Any],
    expected: type[ProviderError],
    args: object,
    stream: bool,
) -> None:
    raised: list[ProviderError] = []
    on_delta = (lambda _: None) if stream else None
    for transport in TRANSPORTS:
        provider = _provider(llm_stack, "err")
        set_faults(_sim(llm_stack), provider.name, **faults)
        with pytest.raises(ProviderError) as caught:
            complete(provider, _say("hi"), [], "sim-1", on_delta=on_delta, transport=transport)
        raised.append(caught.value)
    for exc, transport in zip(raised, TRANSPORTS, strict=True):
        assert type(exc) is expected, (transport, exc)
        # The status of a refusal, the wait a retryable error asked for.
        assert exc.args[2] == args, (transport, exc.args)
    assert raised[0].args == raised[1].args


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_unreachable_provider_is_a_retryable_error(transport: LlmTransport) -> None:
    provider = ProviderConfig(name=f"gone-{transport}", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(RetryableProviderError, match=f"gone-{transport}: "):
        complete(provider, _say("hi"), [], "sim-1", transport=transport)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_call_that_outlives_its_timeout_ends_as_a_retryable_error(
    llm_stack: Stack, transport: LlmTransport, stream: bool
) -> None:
    provider = _provider(llm_stack, f"hang-{transport}", timeout=0.5, connect_timeout=0.5)
    set_faults(_sim(llm_stack), provider.name, hang=True, hang_seconds=30)
    on_delta = (lambda _: None) if stream else None
    started = time.monotonic()
    with pytest.raises(RetryableProviderError, match=f"hang-{transport}: .*Timeout"):
        complete(provider, _say("hi"), [], "sim-1", on_delta=on_delta, transport=transport)
    assert 0.5 <= time.monotonic() - started < 3
    wait_for(lambda: _in_flight(llm_stack) == 0, 5, "the simulator to see the call dropped")
    assert tasks_in_flight() == 0


class _Interrupted(Exception):
    """What the alarm raises in the waiting thread, as a soft time limit would."""


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise _Interrupted


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_caller_that_stops_waiting_leaves_no_call_running(
    llm_stack: Stack, transport: LlmTransport
) -> None:
    """A signal in the waiting thread (how a soft time limit reaches a prefork step) ends the
    call with it: the provider sees the connection dropped, nothing is left on the loop."""
    provider = _provider(llm_stack, f"abandon-{transport}")
    # A hang, not a latency: the simulator notices a client that leaves while it hangs.
    set_faults(_sim(llm_stack), provider.name, hang=True, hang_seconds=30)
    previous = signal.signal(signal.SIGALRM, _interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(_Interrupted):
            complete(provider, _say("hi"), [], "sim-1", transport=transport)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    wait_for(lambda: _in_flight(llm_stack) == 0, 5, "the simulator to see the call dropped")
    wait_for(lambda: tasks_in_flight() == 0, 5, "the loop to drop the call")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_callback_that_raises_stops_the_stream(llm_stack: Stack, transport: LlmTransport) -> None:
    """A run cancelled mid-answer raises from the token relay: the rest of the answer is not
    read, and the error reaches the step as it is."""
    provider = _provider(llm_stack, f"cancel-{transport}")
    seen: list[str] = []

    def on_delta(text: str) -> None:
        seen.append(text)
        if len(seen) == 5:
            raise RunCancelled("run-1")

    started = time.monotonic()
    with pytest.raises(RunCancelled):
        complete(provider, _say(LONG_REPLY), [], "sim-1", on_delta=on_delta, transport=transport)
    assert time.monotonic() - started < 1.5  # the whole answer takes about 3 s
    assert len(seen) == 5
    wait_for(lambda: _in_flight(llm_stack) == 0, 5, "the simulator to see the stream dropped")
    wait_for(lambda: tasks_in_flight() == 0, 5, "the loop to drop the call")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_breaker_counts_what_either_transport_reports(
    llm_stack: Stack, transport: LlmTransport
) -> None:
    a = _provider(llm_stack, f"brk-a-{transport}", fail_max=2, reset_timeout=30, timeout=1)
    b = _provider(llm_stack, f"brk-b-{transport}", timeout=1)
    settings = Settings(
        redis_url=llm_stack.redis_url or "",
        key_prefix=f"t-{transport}",
        providers=[a, b],
        llm_transport=transport,
    )
    set_faults(_sim(llm_stack), a.name, status=500)
    chain = [Target(a.name, "sim-1"), Target(b.name, "sim-1")]
    served = [call_chain(settings, chain, _say("hi"), [])[1].provider for _ in range(2)]
    assert served == [b.name, b.name]  # a failed, the call moved on in the same pass
    assert get_guard(settings, a).breaker.current_state == "open"
    # Open: a is skipped, not called; b serves.
    calls = httpx2.get(f"{_sim(llm_stack)}/_sim/providers/{a.name}/calls", timeout=5).json()
    assert len(calls["times"]) == 2
    assert call_chain(settings, chain, _say("hi"), [])[1].provider == b.name
    after = httpx2.get(f"{_sim(llm_stack)}/_sim/providers/{a.name}/calls", timeout=5).json()
    assert len(after["times"]) == 2
    # A timeout is a failure too; a success closes nothing it should not.
    set_faults(_sim(llm_stack), b.name, hang=True, hang_seconds=30)
    with pytest.raises(RetryableProviderError, match="Timeout"):
        call_chain(settings, [Target(b.name, "sim-1")], _say("hi"), [])
    assert get_guard(settings, b).storage.counter == 1


def test_a_forked_child_starts_a_loop_of_its_own(llm_stack: Stack) -> None:
    provider = _provider(llm_stack, "fork")
    assert complete(provider, _say("parent"), [], "sim-1", transport="aiohttp").content
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        pid = os.fork()
    if pid == 0:  # the child: the parent's loop thread is not here
        code = 1
        try:
            answer = complete(provider, _say("child"), [], "sim-1", transport="aiohttp")
            os.write(write, (answer.content or "").encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the child's call never finished")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert os.read(read, 1000) == b"Echo: child"
    os.close(read)


# --- the transport that is not the default, in real workers -----------------------------------
OTHER_TRANSPORT: LlmTransport = "httpx" if DEFAULT_LLM_TRANSPORT == "aiohttp" else "aiohttp"
#: Provider ``a``'s timeout in the fleet below: a hanging ``a`` costs a step this long.
A_TIMEOUT = 1.0
A_FAIL_MAX = 2


@pytest.fixture(scope="module")
def other_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A fleet on :data:`OTHER_TRANSPORT`: providers ``a`` then ``b``, streamed answers a
    chunk every ``TOKEN_DELAY`` s."""

    def start(stack: Stack) -> None:
        stack.start_redis()
        sim = stack.start_simulator(token_delay=TOKEN_DELAY).removesuffix("/v1")
        a = {"name": "a", "base_url": f"{sim}/p/a/v1", "priority": 1}
        a |= {"timeout": A_TIMEOUT, "fail_max": A_FAIL_MAX, "reset_timeout": 60}
        b = {"name": "b", "base_url": f"{sim}/p/b/v1", "priority": 2}
        stack.env_overrides = {
            "AGENTFLEET_PROVIDERS": json.dumps([a, b]),
            "AGENTFLEET_LLM_TRANSPORT": OTHER_TRANSPORT,
            "AGENTFLEET_STREAM_FLUSH_INTERVAL": "0.05",
        }
        stack.start_worker(PoolSpec("agents", "threads", 20))
        stack.start_worker(PoolSpec("tools", "prefork", 1))
        stack.start_api()

    stack = Stack(Path(tmp_path_factory.mktemp("other-transport")))
    with private_fleet(stack, start, 2) as fleet:
        yield fleet


@pytest.fixture
def other(other_fleet: Fleet) -> Fleet:
    """:func:`other_fleet` with the simulator's faults and the breakers cleared."""
    sim = other_fleet.stack.simulator_url.removesuffix("/v1")
    for name in ("a", "b"):
        clear_faults(sim, name)
    other_fleet.sim.post("/_sim/reset")
    other_fleet.redis.delete(*other_fleet.redis.keys("af:provider:*") or ["-"])
    return other_fleet


def _calls_to(fleet: Fleet, provider: str) -> int:
    return len(fleet.sim.get(f"/_sim/providers/{provider}/calls").json()["times"])


def test_the_other_transport_is_the_one_the_workers_use(other: Fleet) -> None:
    assert other.client.run("hello", timeout=30).status == "succeeded"
    started_a_loop = "run on its aiohttp event loop" in other.worker_of("agents").log.read_text()
    assert started_a_loop == (OTHER_TRANSPORT == "aiohttp")


def test_on_the_other_transport_a_streamed_run_relays_its_tokens(other: Fleet) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    run_id = other.client.create_run(f"[[reply:{words}]]", stream=True).id
    run = other.client.wait(run_id, timeout=30)
    assert run.status == "succeeded", run.error
    tokens = [e for e in other.client.events(run_id) if e.type == "token"]
    assert len(tokens) > 1  # written as the answer came, not once at the end
    assert "".join(e.data["text"] for e in tokens) == words == run.result


def test_on_the_other_transport_a_run_cancelled_mid_answer_stops_its_stream(
    other: Fleet,
) -> None:
    run_id = other.client.create_run(LONG_REPLY, stream=True, providers=["b"]).id
    first = next(e for e in other.client.events(run_id) if e.type == "token")
    assert first.data["text"]
    cancelled_at = time.monotonic()
    assert other.client.cancel(run_id).status == "cancelled"
    # The relay finds the run cancelled at its next write and the call is dropped: the
    # simulator stops answering long before the 3 s the whole answer takes.
    wait_for(lambda: other.sim_stats()["in_flight"] == 0, 10, "the stream to be dropped")
    assert time.monotonic() - cancelled_at < 1.5
    assert other.client.get_run(run_id).status == "cancelled"


def test_on_the_other_transport_a_hanging_provider_times_out_and_the_step_falls_back(
    other: Fleet,
) -> None:
    sim = other.stack.simulator_url.removesuffix("/v1")
    set_faults(sim, "a", hang=True, hang_seconds=30)
    started = time.monotonic()
    run = other.client.run("hello", timeout=30)
    assert run.status == "succeeded", run.error
    assert run.provider == "b"
    assert time.monotonic() - started >= A_TIMEOUT
    assert (_calls_to(other, "a"), _calls_to(other, "b")) == (1, 1)
    a = next(p for p in other.client.providers() if p.name == "a")
    assert a.failures == 1  # the timeout counted against a's breaker
    wait_for(lambda: other.sim_stats()["in_flight"] == 0, 5, "a's call to be dropped")


def test_on_the_other_transport_the_breaker_opens_and_runs_go_on(other: Fleet) -> None:
    sim = other.stack.simulator_url.removesuffix("/v1")
    set_faults(sim, "a", status=500)
    runs = [other.client.run(f"hello {i}", timeout=30) for i in range(A_FAIL_MAX + 2)]
    assert [(r.status, r.provider) for r in runs] == [("succeeded", "b")] * (A_FAIL_MAX + 2)
    a = next(p for p in other.client.providers() if p.name == "a")
    assert a.state == "open"
    assert _calls_to(other, "a") == A_FAIL_MAX  # nothing reached a once it opened
