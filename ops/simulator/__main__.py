"""Command line entry point: ``python -m agentfleet.simulator --port 8799``."""

from __future__ import annotations

import argparse
import importlib.util

import uvicorn

from ._app import SimulatorConfig, create_app
from ._providers import RECORD_LIMIT


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m agentfleet.simulator",
        description="Serve the OpenAI-compatible chat-completions simulator.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=8799, help="TCP port to bind")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds to wait before each response"
    )
    parser.add_argument(
        "--token-delay", type=float, default=0.0, help="seconds between streamed tokens"
    )
    parser.add_argument(
        "--record-requests",
        type=int,
        default=RECORD_LIMIT,
        metavar="N",
        help=f"request bodies kept per provider for GET /_sim/requests (default {RECORD_LIMIT})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the simulator until interrupted."""
    args = _parse_args(argv)
    config = SimulatorConfig(
        latency=args.latency, token_delay=args.token_delay, record_requests=args.record_requests
    )
    app = create_app(config)
    # uvloop and httptools are optional speed-ups; fall back to the pure
    # Python implementations when they are not installed.
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    has_httptools = importlib.util.find_spec("httptools") is not None
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop" if has_uvloop else "asyncio",
        http="httptools" if has_httptools else "h11",
        log_level="warning",
        access_log=False,
        # Benchmarks open thousands of connections at once; the default
        # listen backlog would drop some of them.
        backlog=4096,
        # Longer than clients keep idle connections, so a reused one is never being closed.
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
