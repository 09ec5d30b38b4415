"""The bench's command line: ``python -m ops.bench``."""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
import typing
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import ops.bench as package
from agentfleet.tasks.setting_groups import LlmTransport
from ops.bench import accept, chord, concurrency, features, latency, memory, throughput
from ops.bench._common import FULL, QUICK
from ops.bench._stack import SUBMIT_PATHS, Bench
from ops.stack import Stack

#: Every section by its key, in the order they run (see :mod:`ops.bench`): each module measures
#: with ``measure(bench)`` and tells its numbers with ``report(rows)``.
SECTION_MODULES: dict[str, ModuleType] = {
    "a": latency,
    "b": throughput,
    "c": concurrency,
    "d": accept,
    "e": chord,
    "f": memory,
    "g": features,
}
SECTIONS = tuple(SECTION_MODULES)


def json_safe(value: Any) -> Any:
    """``value`` with NaN (a number not measured) as null, which strict JSON readers accept."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def report_problems(name: str, results: Sequence[Any]) -> str:
    """The problems of a section's configurations, with their log tails."""
    lines = [f"{name} {r.config}: {r.problem}" for r in results if r.problem]
    return "\n\n".join(lines)


# --- command line ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench", description=(package.__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run, e.g. a,d")
    parser.add_argument(
        "--pools", default="gevent,threads,prefork", help="agents pool families to measure"
    )
    parser.add_argument(
        "--appendfsync",
        choices=("no", "everysec", "always"),
        default="no",
        help="the bench's Redis keeps an append-only file fsynced so (no: no file)",
    )
    parser.add_argument(
        "--submit",
        choices=SUBMIT_PATHS,
        default="api",
        help="how sections (b) and (c) submit the fleet's runs: POST /v1/runs to an API "
        "process (whose CPU is the fleet's) or submit_run in the bench's own process",
    )
    parser.add_argument(
        "--llm-transport",
        default="",
        help="in (b) and (c), run each fleet configuration on each of these LLM transports "
        "in turn, e.g. aiohttp,httpx (default: the fleet's default only)",
    )
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args(argv)
    args.llm_transport = [t.strip() for t in args.llm_transport.split(",") if t.strip()]
    if unknown := set(args.llm_transport) - set(typing.get_args(LlmTransport)):
        parser.error(f"unknown LLM transports: {', '.join(sorted(unknown))}")
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    args.pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    if unknown := set(args.only) - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if unknown := set(args.pools) - set(latency.LATENCY_POOLS):
        parser.error(f"unknown pools: {', '.join(sorted(unknown))}")
    return args


def raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one; the workers inherit it.

    A worker with 1,000 greenlets holds an HTTP and a Redis connection per greenlet, and the
    simulator one socket per call in flight: far more than a default soft limit of 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def progress(message: str) -> None:
    """A progress line on stderr, so stdout holds only the tables."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_sections(bench: Bench, only: Sequence[str]) -> dict[str, Any]:
    """Run the sections asked for, printing each table as soon as it is measured."""
    numbers: dict[str, Any] = {}
    for key, section in SECTION_MODULES.items():
        if key not in only:
            continue
        name = section.__name__.rsplit(".", 1)[-1]
        progress(f"({key}) {name}")
        rows = section.measure(bench)
        numbers[name] = [asdict(r) for r in rows]
        print(section.report(rows), end="\n\n", flush=True)
        if problems := report_problems(f"({key})", rows):
            print(problems, end="\n\n", flush=True)
    return numbers


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; 0 when every configuration finished without a problem."""
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="agentfleet-bench-"))
    started = time.monotonic()
    progress(
        f"sizes {sizes}; appendfsync {args.appendfsync}; submit {args.submit}; logs in {workdir}"
    )
    with Stack(workdir) as stack:
        bench = Bench(stack, sizes, args.pools, args.appendfsync, args.submit, args.llm_transport)
        bench.start()
        numbers = run_sections(bench, args.only)
    wall = time.monotonic() - started
    print(f"bench wall time: {wall:.0f} s ({'quick' if args.quick else 'full'}); logs in {workdir}")
    if args.json:
        document = {
            "sizes": asdict(sizes),
            "pools": args.pools,
            "appendfsync": args.appendfsync,
            "submit": args.submit,
            "llm_transports": args.llm_transport,
            "wall_s": wall,
            **numbers,
        }
        args.json.write_text(json.dumps(json_safe(document), indent=2) + "\n")
    failed = [r for section in numbers.values() for r in section if r.get("problem")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
