"""One ``openai`` client per provider per process, built lazily so it is made after fork."""

from __future__ import annotations

import os

import httpx2
import openai

from workers.settings import Settings

_clients: dict[tuple[int, str], openai.OpenAI] = {}


def get_client(settings: Settings) -> openai.OpenAI:
    """The process's client for the configured provider.

    SDK retries are off (``max_retries=0``): Celery owns retries, so one failed call is one
    attempt, a soft time limit is never swallowed by the SDK's retry loop, and the timeout
    arithmetic in ``workers.conf`` holds. ``base_url`` is always explicit so that an
    ``OPENAI_BASE_URL`` in the environment cannot redirect the fleet.
    """
    key = (os.getpid(), settings.llm_endpoint)
    client = _clients.get(key)
    if client is None:
        client = openai.OpenAI(
            base_url=settings.llm_endpoint,
            api_key=settings.llm_key,
            max_retries=0,
            timeout=httpx2.Timeout(settings.llm_timeout, connect=settings.llm_connect_timeout),
            http_client=openai.DefaultHttpxClient(
                limits=httpx2.Limits(max_connections=4096, max_keepalive_connections=1024),
            ),
        )
        _clients[key] = client
    return client


def reset_clients() -> None:
    """Forget clients inherited from a parent process (called in ``worker_process_init``)."""
    _clients.clear()
