"""One ``openai`` client per provider per process, built lazily so it is made after fork."""

from __future__ import annotations

import os

import httpx2
import openai

from agentfleet.tasks.llm._transport import PerThreadTransport, threads_are_greenlets
from agentfleet.tasks.settings import ProviderConfig

#: Seconds an idle connection to a provider is kept.
KEEPALIVE_S = 4.0

_clients: dict[tuple[int, str, str], openai.OpenAI] = {}


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
    _clients.clear()
