"""One ``openai`` client per provider per process, built lazily so it is made after fork.

Two kinds, one per transport (``llm_transport``): a blocking ``openai.OpenAI`` on httpx, and an
``openai.AsyncOpenAI`` on the SDK's aiohttp transport that only the process's event loop
(``tasks/llm/_loop.py``) uses. Both are made with the same base URL, key, timeouts and no SDK
retries.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading

import httpx2
import openai

from agentfleet.tasks.llm._loop import running_loop
from agentfleet.tasks.llm._transport import PerThreadTransport, threads_are_greenlets
from agentfleet.tasks.setting_groups import ProviderConfig

#: Seconds an idle connection to a provider is kept.
KEEPALIVE_S = 4.0

#: Connections the aiohttp client of a provider may hold at once: far above the calls a
#: worker has in flight, so that no call ever waits for one (aiohttp's default is 100).
AIO_MAX_CONNECTIONS = 10_000

_clients: dict[tuple[int, str, str], openai.OpenAI] = {}
_async_clients: dict[tuple[int, str, str], openai.AsyncOpenAI] = {}
_async_lock = threading.Lock()


def get_client(provider: ProviderConfig) -> openai.OpenAI:
    """The process's client for ``provider``.

    SDK retries are off (``max_retries=0``): Celery owns retries, so one failed call is one
    attempt, a soft time limit is never swallowed by the SDK's retry loop, and the timeout
    arithmetic in ``agentfleet.workers.conf`` holds. ``base_url`` is always explicit so that an
    ``OPENAI_BASE_URL`` in the environment cannot redirect the fleet.
    """
    key = (os.getpid(), provider.name, provider.base_url)
    client = _clients.get(key)
    if client is None:
        client = openai.OpenAI(
            base_url=provider.base_url,
            api_key=provider.api_key(),
            max_retries=0,
            timeout=httpx2.Timeout(provider.timeout, connect=provider.connect_timeout),
            http_client=_http_client(),
        )
        _clients[key] = client
    return client


def get_async_client(provider: ProviderConfig) -> openai.AsyncOpenAI:
    """The process's aiohttp client for ``provider``, made as :func:`get_client` makes its.

    Used only on the process's event loop: its aiohttp session is opened there, on its first
    request, and belongs to that loop.
    """
    key = (os.getpid(), provider.name, provider.base_url)
    client = _async_clients.get(key)
    if client is not None:
        return client
    with _async_lock:
        client = _async_clients.get(key)
        if client is None:
            # Idle connections expire as the httpx client's do, for the same reason.
            limits = httpx2.Limits(
                max_connections=AIO_MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE_S
            )
            client = openai.AsyncOpenAI(
                base_url=provider.base_url,
                api_key=provider.api_key(),
                max_retries=0,
                timeout=httpx2.Timeout(provider.timeout, connect=provider.connect_timeout),
                http_client=openai.DefaultAioHttpClient(limits=limits),
            )
            _async_clients[key] = client
    return client


@atexit.register
def _close_async_clients() -> None:
    # On the loop that opened their sessions: aiohttp warns about every session that is not
    # closed, and a process that exits normally can close them. A pool child that exits
    # with os._exit skips this; the kernel closes its sockets.
    running = running_loop()
    clients = [c for (pid, _, _), c in _async_clients.items() if pid == os.getpid()]
    if running is None or not clients:
        return
    closing = asyncio.run_coroutine_threadsafe(_close_all(clients), running)
    with contextlib.suppress(Exception):
        closing.result(timeout=5)


async def _close_all(clients: list[openai.AsyncOpenAI]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def _http_client() -> httpx2.Client:
    # Idle connections expire before common server idle timeouts (5 s in uvicorn): reusing one
    # the server is closing fails as a connection error, which would count against the
    # provider's breaker.
    if threads_are_greenlets():
        limits = httpx2.Limits(
            max_connections=4096, max_keepalive_connections=1024, keepalive_expiry=KEEPALIVE_S
        )
        return openai.DefaultHttpxClient(limits=limits)
    return openai.DefaultHttpxClient(transport=PerThreadTransport(keepalive_expiry=KEEPALIVE_S))


def reset_clients() -> None:
    """Forget clients inherited from a parent process (called in ``worker_process_init``)."""
    global _async_lock
    _clients.clear()
    _async_clients.clear()
    # A lock another thread of the parent held at fork would stay held in the child.
    _async_lock = threading.Lock()


os.register_at_fork(after_in_child=reset_clients)
