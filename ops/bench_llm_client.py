"""Client CPU of one chat completion through the openai SDK: ``python -m ops.bench_llm_client``.

Against the zero-latency simulator, the same request (a three-message conversation and every
registered tool's schema) made two ways, alternately: ``client.chat.completions.create`` and
``client.post("/chat/completions", cast_to=ChatCompletion)``, which is what the fleet does
(``tasks/llm/_call.py``). Prints CPU and wall milliseconds per call for each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from ops.stack import Stack
from tasks.llm._call import CHAT_PATH
from tasks.tools import registry

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    args = parser.parse_args(argv)
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
