"""The baseline of ``python -m ops.bench``: stock Celery with a no-op task and a chord body.

A worker runs it with::

    BENCH_REDIS_URL=redis://127.0.0.1:6379/1 \\
        python -m celery -A ops.bench_plain worker -P prefork -c 2 -Q plain

The app keeps Celery's defaults (JSON serializer, Redis broker and result backend) apart from
the queue name, so what the bench compares agentfleet against is what a new Celery user gets.

It also has the smallest agent loop one can write on stock Celery and the stock ``openai``
client: a run is a chain of an LLM call, a tool call on a prefork queue, and a second LLM call
(:func:`agent_run`). It keeps no run state, takes no lease, sends no task events and acks
early; nothing survives a lost worker. The bench runs it on the same pools and simulator as
agentfleet's runs, as the floor of what the same calls cost on this machine: with the SDK's
sync client (its default), and with ``BENCH_LLM_TRANSPORT=aiohttp`` the best stock setup
measured here, each task handing its call to one ``AsyncOpenAI`` on the SDK's aiohttp
transport, on an event loop of the worker process.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Any

from celery import Celery, Signature, chain
from openai import AsyncOpenAI, DefaultAioHttpClient, OpenAI
from openai.types.chat import ChatCompletion

#: The only queue the baseline uses, so it never shares a list with agentfleet's queues.
QUEUE = "plain"

#: Where the worker process finds Redis; the bench sets it for the worker it starts.
URL_ENV = "BENCH_REDIS_URL"

#: The tool calls of :func:`agent_run` go to this queue, served by a prefork worker.
TOOLS_QUEUE = "plain-tools"
#: The OpenAI-compatible endpoint of the agent loop (the simulator), read by the workers.
LLM_URL_ENV = "BENCH_LLM_BASE_URL"
#: ``aiohttp``: the workers' LLM calls go through one aiohttp event loop per process.
LLM_TRANSPORT_ENV = "BENCH_LLM_TRANSPORT"

NOOP = "plain.noop"
COLLECT = "plain.collect"
LLM_STEP = "plain.llm_step"
TOOL_STEP = "plain.tool_step"

#: The one tool the agent loop offers, as the openai SDK takes it. Written out rather than
#: taken from agentfleet's registry: the baseline imports nothing of agentfleet.
TEXT_STATS = {
    "type": "function",
    "function": {
        "name": "text_stats",
        "description": "Count characters, words and lines in a text.",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
}

_client: OpenAI | None = None


_looped: tuple[asyncio.AbstractEventLoop, AsyncOpenAI] | None = None
_looped_lock = threading.Lock()


def _base_url() -> str:
    return os.environ.get(LLM_URL_ENV, "http://127.0.0.1:8000/v1")


def llm_client() -> OpenAI:
    """One client per process, made on first use (after a prefork child is forked)."""
    global _client
    if _client is None:
        _client = OpenAI(base_url=_base_url(), api_key="bench", max_retries=0, timeout=60.0)
    return _client


def _loop_client() -> tuple[asyncio.AbstractEventLoop, AsyncOpenAI]:
    """One event loop thread and one aiohttp ``AsyncOpenAI`` on it per process, made on
    first use (after a prefork child is forked)."""
    global _looped
    with _looped_lock:
        if _looped is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="llm-loop", daemon=True).start()

            async def make() -> AsyncOpenAI:  # aiohttp wants its session made on its loop
                return AsyncOpenAI(
                    base_url=_base_url(),
                    api_key="bench",
                    max_retries=0,
                    timeout=60.0,
                    http_client=DefaultAioHttpClient(),
                )

            _looped = (loop, asyncio.run_coroutine_threadsafe(make(), loop).result())
        return _looped


def complete(messages: list[dict[str, Any]]) -> ChatCompletion:
    """One chat completion with the agent loop's tool, on the process's transport."""
    if os.environ.get(LLM_TRANSPORT_ENV) == "aiohttp":
        loop, client = _loop_client()
        call = client.chat.completions.create(
            model="sim-1",
            messages=messages,  # type: ignore[arg-type]
            tools=[TEXT_STATS],  # type: ignore[list-item]
        )
        return asyncio.run_coroutine_threadsafe(call, loop).result()
    return llm_client().chat.completions.create(
        model="sim-1",
        messages=messages,  # type: ignore[arg-type]
        tools=[TEXT_STATS],  # type: ignore[list-item]
    )


def create_app(url: str) -> Celery:
    """A stock Celery app on ``url`` (broker and result backend) with the ``noop`` task."""
    app = Celery("plain", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
    )

    # Not shared: the bench builds several apps in one process, each with its own noop.
    @app.task(name=NOOP, shared=False)
    def noop() -> None:
        """Do nothing: a round trip through the queue and the result backend."""

    @app.task(name=COLLECT, shared=False)
    def collect(results: list[Any]) -> int:
        """A chord body: how many header results arrived."""
        return len(results)

    @app.task(name=LLM_STEP, shared=False)
    def llm_step(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One LLM call on the conversation; the conversation with the answer appended."""
        completion = complete(messages)
        answer = completion.choices[0].message.model_dump(exclude_none=True)
        return [*messages, answer]

    @app.task(name=TOOL_STEP, shared=False)
    def tool_step(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Answer the last message's tool calls (``text_stats``) in one task."""
        results = []
        for call in messages[-1].get("tool_calls") or []:
            text = str(json.loads(call["function"]["arguments"]).get("text", ""))
            stats = {"characters": len(text), "words": len(text.split())}
            content = json.dumps(stats)
            results.append({"role": "tool", "tool_call_id": call["id"], "content": content})
        return [*messages, *results]

    return app


def agent_run(app: Celery, prompt: str) -> Signature:
    """A two-step agent run as one chain: LLM call, tool call (on :data:`TOOLS_QUEUE`), LLM call.

    Its ``apply_async()`` result is the last call's, so its ID is the run's to poll.
    """
    return chain(
        app.signature(LLM_STEP, args=([{"role": "user", "content": prompt}],)),
        app.signature(TOOL_STEP, queue=TOOLS_QUEUE),
        app.signature(LLM_STEP),
    )


def noop_task(app: Celery) -> Any:
    """The ``noop`` task registered on ``app``."""
    return app.tasks[NOOP]


def collect_task(app: Celery) -> Any:
    """The ``collect`` chord body registered on ``app``."""
    return app.tasks[COLLECT]


#: The app ``celery -A ops.bench_plain`` loads.
app = create_app(os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"))
