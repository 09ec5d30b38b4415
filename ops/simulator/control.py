"""Read what a running simulator recorded, and set a provider's default usage.

Importable by scripts and tests::

    from agentfleet.simulator.control import recorded_requests, set_usage

    set_usage(url, "a", prompt_tokens=1000, completion_tokens=50, cached_tokens=800)
    bodies = [r["body"] for r in recorded_requests(url, provider="a", tag="t1")]

``recorded_requests`` reads ``GET /_sim/requests``; ``set_usage`` and ``clear_usage`` act on
``/_sim/providers/{name}/usage``; ``reset`` is ``POST /_sim/reset``. All of them raise
``httpx.HTTPStatusError`` on a refusal.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

_TIMEOUT = 10.0


def _answer(response: httpx.Response) -> dict[str, Any]:
    """Return the JSON answer, raising ``httpx.HTTPStatusError`` on a refusal."""
    response.raise_for_status()
    payload: dict[str, Any] = response.json()
    return payload


def _usage_url(url: str, provider: str) -> str:
    return f"{url.rstrip('/')}/_sim/providers/{quote(provider, safe='')}/usage"


def recorded_requests(
    url: str, *, provider: str | None = None, tag: str | None = None, since: int = 0
) -> list[dict[str, Any]]:
    """The request bodies the simulator at ``url`` kept, oldest first.

    Each is ``{"seq", "provider", "tag", "tags", "time", "body"}``; ``since`` keeps
    those after that sequence number (``last_seq`` returns the latest one).
    """
    params: dict[str, str | int] = {"since": since}
    if provider is not None:
        params["provider"] = provider
    if tag is not None:
        params["tag"] = tag
    answer = _answer(httpx.get(f"{url.rstrip('/')}/_sim/requests", params=params, timeout=_TIMEOUT))
    records: list[dict[str, Any]] = answer["requests"]
    return records


def last_seq(url: str) -> int:
    """The sequence number of the latest request the simulator recorded (0 before any)."""
    # Nothing comes after the largest sequence number: only last_seq is wanted.
    params = {"since": str(2**63)}
    answer = _answer(httpx.get(f"{url.rstrip('/')}/_sim/requests", params=params, timeout=_TIMEOUT))
    seq: int = answer["last_seq"]
    return seq


def set_usage(
    url: str,
    provider: str,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int | None = None,
) -> dict[str, Any]:
    """Make ``provider``'s answers report this usage unless their script sets one."""
    settings: dict[str, int] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }
    if cached_tokens is not None:
        settings["cached_tokens"] = cached_tokens
    return _answer(httpx.put(_usage_url(url, provider), json=settings, timeout=_TIMEOUT))


def clear_usage(url: str, provider: str) -> dict[str, Any]:
    """Let ``provider``'s answers count their usage again (four characters a token)."""
    return _answer(httpx.delete(_usage_url(url, provider), timeout=_TIMEOUT))


def reset(url: str) -> dict[str, Any]:
    """Forget counters, faults, usage settings and recorded requests."""
    return _answer(httpx.post(f"{url.rstrip('/')}/_sim/reset", timeout=_TIMEOUT))


__all__ = ["clear_usage", "last_seq", "recorded_requests", "reset", "set_usage"]
