"""Set or clear a running simulator's faults for one provider.

Importable by scripts and tests (``set_faults``, ``clear_faults``) and runnable
from a shell::

    python -m agentfleet.simulator.faults --url http://127.0.0.1:8799 --provider a --status 500
    python -m agentfleet.simulator.faults --provider a --status 429 --retry-after 2
    python -m agentfleet.simulator.faults --provider a --status 429 --code insufficient_quota
    python -m agentfleet.simulator.faults --provider a --hang
    python -m agentfleet.simulator.faults --provider a --clear
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8799"
"""Where ``python -m agentfleet.simulator`` listens unless told otherwise."""

_TIMEOUT = 10.0


def _faults_url(url: str, provider: str) -> str:
    return f"{url.rstrip('/')}/_sim/providers/{quote(provider, safe='')}/faults"


def _answer(response: httpx.Response) -> dict[str, Any]:
    """Return the JSON answer, raising ``httpx.HTTPStatusError`` on a refusal."""
    response.raise_for_status()
    payload: dict[str, Any] = response.json()
    return payload


def set_faults(url: str, provider: str, **faults: Any) -> dict[str, Any]:
    """Replace ``provider``'s faults on the simulator at ``url``.

    ``faults`` are the settings of ``PUT /_sim/providers/{name}/faults``
    (``error_rate``, ``status``, ``retry_after``, ``hang``, ``hang_seconds``,
    ``latency``, ``code``). Returns ``{"provider": ..., "faults": {...}}``.
    """
    response = httpx.put(_faults_url(url, provider), json=faults, timeout=_TIMEOUT)
    return _answer(response)


def clear_faults(url: str, provider: str) -> dict[str, Any]:
    """Clear ``provider``'s faults; returns ``{"provider": ..., "faults": None}``."""
    return _answer(httpx.delete(_faults_url(url, provider), timeout=_TIMEOUT))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m agentfleet.simulator.faults",
        description="Inject or clear faults for one provider of a running simulator.",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="simulator base URL")
    parser.add_argument("--provider", required=True, help="provider name ('default' for /v1)")
    parser.add_argument("--clear", action="store_true", help="remove the provider's faults")
    parser.add_argument("--status", type=int, help="HTTP status of injected errors")
    parser.add_argument("--error-rate", type=float, help="share of requests that fail, 0..1")
    parser.add_argument("--retry-after", type=float, help="seconds to advertise in retry-after")
    parser.add_argument("--hang", action="store_true", help="hold requests, then answer 504")
    parser.add_argument("--hang-seconds", type=float, help="how long --hang holds a request")
    parser.add_argument("--latency", type=float, help="seconds to wait before answering")
    parser.add_argument("--code", help="error.code of injected errors (e.g. insufficient_quota)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Apply the command line's faults and print the simulator's answer."""
    args = _parse_args(argv)
    try:
        if args.clear:
            answer = clear_faults(args.url, args.provider)
        else:
            # Only options given on the command line are sent, so the
            # server's defaults apply to the rest.
            settings = {
                "status": args.status,
                "error_rate": args.error_rate,
                "retry_after": args.retry_after,
                "hang": args.hang or None,
                "hang_seconds": args.hang_seconds,
                "latency": args.latency,
                "code": args.code,
            }
            chosen = {key: value for key, value in settings.items() if value is not None}
            answer = set_faults(args.url, args.provider, **chosen)
    except httpx.HTTPStatusError as exc:
        print(f"refused ({exc.response.status_code}): {exc.response.text}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"cannot reach the simulator at {args.url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
