"""The LLM clients' HTTP transport: a connection pool per thread, over real HTTP.

Each thread gets its own pool and keeps reusing its own connection; pools of different threads
never share one; closing the transport closes every pool; the process's client uses it unless
threads are greenlets.
"""

from __future__ import annotations

import threading

import httpx2
import pytest

from agentfleet.tasks.llm import get_client
from agentfleet.tasks.llm._transport import PerThreadTransport, threads_are_greenlets
from agentfleet.tasks.settings import ProviderConfig
from tests.conftest import Fleet

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
