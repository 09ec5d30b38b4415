"""Client CPU of one chat completion through the openai SDK: ``python -m ops.bench_llm_client``.

Against the zero-latency simulator, the same request (a three-message conversation and every
registered tool's schema) made two ways, alternately: ``client.chat.completions.create`` and
``client.post("/chat/completions", cast_to=ChatCompletion)``, which is what the fleet does
(``tasks/llm/_call.py``). Prints CPU and wall milliseconds per call for each.

``--in-flight N`` measures instead what a call costs with N of them waiting at once, as in an
``agents`` worker: the simulator answers after ``--latency`` seconds, and the same calls are
made from N threads sharing one ``openai.OpenAI`` (what the threads pool does) and from N
asyncio tasks sharing one ``openai.AsyncOpenAI`` (what an asyncio pool would do), alternately.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletion

from agentfleet.tasks.llm._call import CHAT_PATH
from agentfleet.tasks.tools import registry
from ops.stack import Stack

MESSAGES: list[dict[str, Any]] = [
    {"role": "user", "content": 'call text_stats {"text": "x"}'},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "text_stats", "arguments": '{"text": "x"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": '{"chars": 1}'},
]


def per_call_ms(call: Callable[[], object], calls: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call of ``call``, after a warm-up."""
    for _ in range(min(50, calls)):
        call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        call()
    return (
        (time.process_time() - cpu) * 1000 / calls,
        (time.perf_counter() - wall) * 1000 / calls,
    )


def process_cpu_s() -> float:
    """CPU seconds of this process, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def threads_in_flight(base_url: str, in_flight: int, calls: int, prompt: str) -> float:
    """CPU ms per call: ``calls`` calls from ``in_flight`` threads sharing one client."""
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0)
    messages = [{"role": "user", "content": prompt}]

    def one(_: int) -> object:
        return client.chat.completions.create(model="sim", messages=messages)  # type: ignore[arg-type]

    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(one, range(in_flight)))  # every thread and connection made
        cpu = process_cpu_s()
        list(pool.map(one, range(calls)))
        spent = process_cpu_s() - cpu
    client.close()
    return spent * 1000 / calls


def asyncio_in_flight(base_url: str, in_flight: int, calls: int, prompt: str) -> float:
    """CPU ms per call: ``calls`` calls from at most ``in_flight`` tasks on one event loop."""
    messages = [{"role": "user", "content": prompt}]

    async def measure() -> float:
        limits = httpx2.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
        client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key="bench",
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(limits=limits),
        )
        gate = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with gate:
                await client.chat.completions.create(model="sim", messages=messages)  # type: ignore[arg-type]

        await asyncio.gather(*(one() for _ in range(in_flight)))
        cpu = process_cpu_s()
        await asyncio.gather(*(one() for _ in range(calls)))
        spent = process_cpu_s() - cpu
        await client.close()
        return spent * 1000 / calls

    return asyncio.run(measure())


def main_in_flight(args: argparse.Namespace) -> int:
    prompt = f"hello [[latency:{args.latency:g}]]"
    ways = {
        "threads, openai.OpenAI": threads_in_flight,
        "asyncio, openai.AsyncOpenAI": asyncio_in_flight,
    }
    results: dict[str, list[float]] = {name: [] for name in ways}
    with Stack(Path(tempfile.mkdtemp(prefix="agentfleet-llm-client-"))) as stack:
        base_url = stack.start_simulator(latency=0.0)
        for _ in range(args.rounds):
            for name, way in ways.items():
                results[name].append(way(base_url, args.in_flight, args.calls, prompt))
    print(
        f"{args.calls} calls, {args.in_flight} in flight, {args.latency:g} s each, x {args.rounds}"
    )
    for name, rows in results.items():
        shown = ", ".join(f"{ms:.2f}" for ms in rows)
        print(f"{name:32} CPU ms/call: {shown} (best {min(rows):.2f})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument(
        "--in-flight", type=int, default=0, help="calls waiting at once (see the docstring)"
    )
    parser.add_argument(
        "--latency", type=float, default=2.0, help="seconds per call with --in-flight"
    )
    args = parser.parse_args(argv)
    if args.in_flight:
        return main_in_flight(args)
    tools = [registry.get(name).openai_schema for name in registry.names()]
    with Stack(Path(tempfile.mkdtemp(prefix="agentfleet-llm-client-"))) as stack:
        client = openai.OpenAI(base_url=stack.start_simulator(latency=0.0), api_key="bench")
        ways: dict[str, Callable[[], object]] = {
            "chat.completions.create": lambda: client.chat.completions.create(
                model="sim",
                messages=MESSAGES,  # type: ignore[arg-type]
                tools=tools,  # type: ignore[arg-type]
            ),
            "post(cast_to=ChatCompletion)": lambda: client.post(
                CHAT_PATH,
                body={"model": "sim", "messages": MESSAGES, "tools": tools},
                cast_to=ChatCompletion,
            ),
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, call in ways.items():
                results[name].append(per_call_ms(call, args.calls))
        client.close()
    print(f"{len(tools)} tools, {len(MESSAGES)} messages, {args.calls} calls x {args.rounds}")
    for name, rows in results.items():
        cpu = min(r[0] for r in rows)
        wall = min(r[1] for r in rows)
        print(f"{name:32} CPU {cpu:.2f} ms/call  wall {wall:.2f} ms/call (best round)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
