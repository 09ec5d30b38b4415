"""Client CPU of one chat completion through the openai SDK: ``python -m ops.bench_llm_client``.

Against the zero-latency simulator, the same request (a three-message conversation and every
registered tool's schema) made two ways, alternately: ``client.chat.completions.create`` and
``client.post("/chat/completions", cast_to=ChatCompletion)``, which is what the fleet does
(``tasks/llm/_call.py``). Prints CPU and wall milliseconds per call for each.

``--in-flight N`` measures instead what a call costs with N of them waiting at once, as in an
``agents`` worker: the simulator answers after ``--latency`` seconds, and the same calls are
made, alternately, in each of these ways (``--ways`` picks some):

``threads``
    N threads sharing one stock ``openai.OpenAI`` calling ``chat.completions.create``.
``asyncio``
    N asyncio tasks sharing one ``openai.AsyncOpenAI`` on its default httpx transport.
``fleet-httpx``
    N threads calling the fleet's own :func:`agentfleet.tasks.llm.complete` with
    ``transport="httpx"``: a blocking request in each thread, a connection pool per thread.
``fleet-aiohttp``
    The same with ``transport="aiohttp"``: each thread hands its call to the process's event
    loop and waits for it (``tasks/llm/_loop.py``).

``--stream`` streams every answer (the fleet's ways hand each delta to a callback in the
calling thread, as a streamed run does). CPU is the whole process's, every thread included.
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
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from agentfleet.tasks.llm import complete
from agentfleet.tasks.llm._call import CHAT_PATH
from agentfleet.tasks.setting_groups import LlmTransport, ProviderConfig
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


def _in_threads(one: Callable[[int], object], in_flight: int, calls: int) -> float:
    """CPU ms per call of ``one``, called ``calls`` times from ``in_flight`` threads."""
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(one, range(in_flight)))  # every thread and connection made
        cpu = process_cpu_s()
        list(pool.map(one, range(calls)))
        spent = process_cpu_s() - cpu
    return spent * 1000 / calls


def threads_in_flight(
    base_url: str, in_flight: int, calls: int, prompt: str, stream: bool = False
) -> float:
    """CPU ms per call: ``calls`` calls from ``in_flight`` threads sharing one client."""
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0)
    messages = [{"role": "user", "content": prompt}]

    def one(_: int) -> object:
        if not stream:
            return client.chat.completions.create(model="sim", messages=messages)  # type: ignore[arg-type]
        chunks = client.chat.completions.create(model="sim", messages=messages, stream=True)  # type: ignore[arg-type]
        return list(chunks)

    spent = _in_threads(one, in_flight, calls)
    client.close()
    return spent


#: A provider name per transport: the fleet keeps one client per provider per process.
_FLEET_PROVIDERS: dict[str, ProviderConfig] = {}


def fleet_in_flight(
    transport: LlmTransport,
) -> Callable[[str, int, int, str, bool], float]:
    """A way of :func:`main_in_flight`: the fleet's :func:`complete` from threads."""

    def measure(
        base_url: str, in_flight: int, calls: int, prompt: str, stream: bool = False
    ) -> float:
        provider = _FLEET_PROVIDERS.setdefault(
            transport, ProviderConfig(name=f"bench-{transport}", base_url=base_url)
        )
        messages = [{"role": "user", "content": prompt}]
        on_delta = (lambda _: None) if stream else None

        def one(_: int) -> object:
            return complete(provider, messages, [], "sim", on_delta=on_delta, transport=transport)

        return _in_threads(one, in_flight, calls)

    return measure


def asyncio_in_flight(
    base_url: str, in_flight: int, calls: int, prompt: str, stream: bool = False
) -> float:
    """CPU ms per call: ``calls`` calls from at most ``in_flight`` tasks on one event loop."""
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": prompt}]

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
                if not stream:
                    await client.chat.completions.create(model="sim", messages=messages)
                    return
                chunks = await client.chat.completions.create(
                    model="sim", messages=messages, stream=True
                )
                async for _ in chunks:
                    pass

        await asyncio.gather(*(one() for _ in range(in_flight)))
        cpu = process_cpu_s()
        await asyncio.gather(*(one() for _ in range(calls)))
        spent = process_cpu_s() - cpu
        await client.close()
        return spent * 1000 / calls

    return asyncio.run(measure())


#: The ways ``--in-flight`` measures, by the name ``--ways`` takes (see the docstring).
IN_FLIGHT_WAYS: dict[str, tuple[str, Callable[[str, int, int, str, bool], float]]] = {
    "threads": ("threads, openai.OpenAI", threads_in_flight),
    "asyncio": ("asyncio, openai.AsyncOpenAI (httpx)", asyncio_in_flight),
    "fleet-httpx": ("threads, fleet complete() httpx", fleet_in_flight("httpx")),
    "fleet-aiohttp": ("threads, fleet complete() aiohttp", fleet_in_flight("aiohttp")),
}


def main_in_flight(args: argparse.Namespace) -> int:
    prompt = f"hello [[latency:{args.latency:g}]]"
    ways = {IN_FLIGHT_WAYS[w][0]: IN_FLIGHT_WAYS[w][1] for w in args.ways}
    results: dict[str, list[float]] = {name: [] for name in ways}
    with Stack(Path(tempfile.mkdtemp(prefix="agentfleet-llm-client-"))) as stack:
        base_url = stack.start_simulator(latency=0.0)
        for _ in range(args.rounds):
            for name, way in ways.items():
                ms = way(base_url, args.in_flight, args.calls, prompt, args.stream)
                results[name].append(ms)
    streamed = ", streamed" if args.stream else ""
    print(
        f"{args.calls} calls, {args.in_flight} in flight, {args.latency:g} s each{streamed}, "
        f"x {args.rounds}"
    )
    for name, rows in results.items():
        shown = ", ".join(f"{ms:.2f}" for ms in rows)
        print(f"{name:36} CPU ms/call: {shown} (best {min(rows):.2f})")
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
    parser.add_argument(
        "--ways",
        default=",".join(IN_FLIGHT_WAYS),
        help=f"with --in-flight, which of {', '.join(IN_FLIGHT_WAYS)} (alternately)",
    )
    parser.add_argument("--stream", action="store_true", help="with --in-flight, stream answers")
    args = parser.parse_args(argv)
    args.ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    if unknown := set(args.ways) - set(IN_FLIGHT_WAYS):
        parser.error(f"unknown ways: {', '.join(sorted(unknown))}")
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
