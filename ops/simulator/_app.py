"""HTTP layer of the simulator: OpenAI-compatible routes, streaming and stats.

A chat request is recorded (``GET /_sim/requests``) as soon as its body parses, then
answered in this order: a hanging provider's 504, a 400 for an invalid model setting
(``_settings``), the latency, an injected fault, a scripted ``[[error]]``, ``[[flaky]]`` or
``[[garbage]]``, and otherwise the scripted turn, streamed or not alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ._admin import admin_routes
from ._faults import HANG_STATUS, Faults
from ._providers import RECORD_LIMIT, Providers, ProviderState, admitted_at
from ._responses import RequestError, error_body, json_response
from ._script import Reply, Script, decide, message_text, parse_script, script_text
from ._settings import parse_settings

MODELS = ("sim-1", "sim-2")
"""Model ids listed by ``/v1/models``; any model name is accepted on requests."""

DEFAULT_PROVIDER = "default"
"""Provider name counted for requests without a ``/p/{provider}`` prefix."""

FLAKY_LIMIT = 10_000
"""``[[flaky:N]]`` conversations remembered; the oldest is forgotten first."""

# Leading whitespace joins the first token so the chunks reassemble exactly.
_TOKEN_RE = re.compile(r"\s*\S+\s*|\s+")


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Server-wide settings; directives in a prompt override them per conversation."""

    latency: float = 0.0
    """Seconds to wait before answering each request."""
    token_delay: float = 0.0
    """Seconds to wait between streamed text tokens."""
    record_requests: int = RECORD_LIMIT
    """Request bodies kept per provider for ``GET /_sim/requests`` (0: none)."""


@dataclass(slots=True)
class Stats:
    """Request counters exposed at ``/_sim/stats``."""

    requests: int = 0
    by_provider: dict[str, int] = field(default_factory=dict)
    by_tag: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    flaky: dict[str, int] = field(default_factory=dict)
    """503s sent per ``[[flaky:N]]`` conversation (digest of its messages), newest last."""

    def enter(self, provider: str) -> None:
        """Count a chat request as it arrives."""
        self.requests += 1
        self.by_provider[provider] = self.by_provider.get(provider, 0) + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        """Mark a chat request as fully answered (or abandoned by the client)."""
        self.in_flight -= 1

    def tag(self, tags: tuple[str, ...]) -> None:
        """Count a request under each of its ``[[tag:...]]`` names."""
        for name in tags:
            self.by_tag[name] = self.by_tag.get(name, 0) + 1

    def flaky_fails(self, messages: list[dict[str, Any]], times: int) -> bool:
        """Whether this request of a ``[[flaky:times]]`` conversation is answered 503: its
        first ``times`` requests are."""
        digest = hashlib.sha1(
            json.dumps(messages, sort_keys=True).encode(), usedforsecurity=False
        ).hexdigest()
        sent = self.flaky.pop(digest, 0)
        self.flaky[digest] = sent + 1 if sent < times else sent
        while len(self.flaky) > FLAKY_LIMIT:
            del self.flaky[next(iter(self.flaky))]
        return sent < times

    def reset(self) -> None:
        """Zero the counters; requests still running stay counted as in flight."""
        self.requests = 0
        self.by_provider = {}
        self.by_tag = {}
        self.flaky = {}
        self.max_in_flight = self.in_flight

    def snapshot(self) -> dict[str, Any]:
        """Return the counters as a JSON-ready dict."""
        return {
            "requests": self.requests,
            "by_provider": dict(self.by_provider),
            "by_tag": dict(self.by_tag),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }


class ChatCompletions:
    """ASGI endpoint for ``POST .../v1/chat/completions``.

    A raw ASGI callable rather than a request handler so the in-flight gauge
    also covers the time spent streaming the response body.
    """

    def __init__(self, config: SimulatorConfig, stats: Stats, providers: Providers) -> None:
        self._config = config
        self._stats = stats
        self._providers = providers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        provider = scope.get("path_params", {}).get("provider", DEFAULT_PROVIDER)
        # Counted and logged before anything else, so a call log proves
        # whether a request reached the provider at all, even a failed one.
        self._stats.enter(provider)
        state = self._providers.arrive(provider, admitted_at(scope.get("headers", [])))
        try:
            response = await self._respond(Request(scope, receive), state)
            if response is not None:
                await response(scope, receive, send)
        finally:
            self._stats.leave()
            state.in_flight -= 1

    async def _respond(self, request: Request, state: ProviderState) -> Response | None:
        """Choose the response, or ``None`` when the client left while it hung."""
        raw = await request.body()
        body = _parse_body(raw)
        if not isinstance(body, Response):
            script = parse_script(script_text(body["messages"]))
            self._providers.record(state, body, script.tags)
        faults = state.faults
        if faults is not None and faults.hang:
            return await _hang(request.receive, faults, state)
        if isinstance(body, Response):
            return body
        messages: list[dict[str, Any]] = body["messages"]
        self._stats.tag(script.tags)
        try:
            settings = parse_settings(body, lambda: _conversation(messages))
        except RequestError as exc:
            return json_response(error_body(400, exc.message, param=exc.param), 400)
        latency = _latency(faults, script, self._config)
        if latency > 0:
            await asyncio.sleep(latency)

        if faults is not None and faults.fails(state.rng):
            state.errors_sent += 1
            return _fault_error(faults, state.name)
        if script.error is not None:
            return _scripted_error(script.error)
        if script.flaky and self._stats.flaky_fails(messages, script.flaky):
            return _scripted_error(503)
        if script.garbage:
            return Response(b"this is not json", media_type="application/json")

        tools = body.get("tools")
        reply = decide(
            messages, tools if isinstance(tools, list) else None, script, settings, state.usage
        )
        meta = {
            "id": "chatcmpl-" + hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:24],
            "created": int(time.time()),
            "model": str(body.get("model") or MODELS[0]),
        }
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            chunks = _stream(reply, meta, include_usage, self._config.token_delay)
            return StreamingResponse(chunks, media_type="text/event-stream")
        return json_response(_completion(reply, meta))


def _parse_body(raw: bytes) -> dict[str, Any] | Response:
    """Return the request object, or the 400 response explaining why it is unusable."""
    try:
        body = json.loads(raw)
    except ValueError:
        return json_response(error_body(400, "request body is not valid JSON"), 400)
    if not isinstance(body, dict):
        return json_response(error_body(400, "request body must be a JSON object"), 400)
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return json_response(error_body(400, "'messages' must be a list of objects"), 400)
    return body


def _conversation(messages: list[dict[str, Any]]) -> str:
    """The text of every message, for checks that look at the whole conversation."""
    return "\n".join(message_text(message.get("content")) for message in messages)


def _latency(faults: Faults | None, script: Script, config: SimulatorConfig) -> float:
    """Seconds to wait: the provider's fault, else the prompt's directive, else the server's."""
    if faults is not None and faults.latency is not None:
        return faults.latency
    return config.latency if script.latency is None else script.latency


async def _hang(receive: Receive, faults: Faults, state: ProviderState) -> Response | None:
    """Hold a request for ``hang_seconds`` and answer 504, unless the client leaves first."""
    if not await _wait_unless_disconnected(receive, faults.hang_seconds):
        return None
    state.errors_sent += 1
    message = f"simulated hang of {faults.hang_seconds:g}s for provider {state.name!r}"
    return json_response(error_body(HANG_STATUS, message), HANG_STATUS)


async def _wait_unless_disconnected(receive: Receive, seconds: float) -> bool:
    """Wait ``seconds``; return ``False`` early if the client disconnects first.

    The body has already been read, so the next ASGI message is the
    disconnect. Watching for it keeps abandoned hangs from piling up for
    minutes after a client has timed out.
    """

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
    finally:
        watcher.cancel()
    return not done


def _fault_error(faults: Faults, provider: str) -> Response:
    """Answer a request that the provider's ``error_rate`` picked to fail."""
    status = faults.status
    message = f"simulated fault {status} for provider {provider!r}"
    body = error_body(status, message, code=faults.error_code())
    return json_response(body, status, faults.error_headers())


def _scripted_error(status: int) -> Response:
    """Answer a ``[[error:CODE]]`` conversation."""
    headers = {"retry-after": "1"} if status == 429 else None
    return json_response(error_body(status, f"simulated error {status}"), status, headers)


def _message(reply: Reply) -> dict[str, Any]:
    """Return the assistant message object of a non-streamed completion."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    return message


def _completion(reply: Reply, meta: dict[str, Any]) -> dict[str, Any]:
    """Return a ``chat.completion`` object."""
    return {
        **meta,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": _message(reply),
                "finish_reason": reply.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": reply.usage,
    }


def _chunk(meta: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> bytes:
    """Return one SSE event carrying a ``chat.completion.chunk``."""
    payload = {
        **meta,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _stream(
    reply: Reply, meta: dict[str, Any], include_usage: bool, token_delay: float
) -> AsyncIterator[bytes]:
    """Yield the SSE events of a streamed completion, ending with ``[DONE]``."""
    yield _chunk(meta, {"role": "assistant", "content": ""})
    if reply.tool_calls:
        for index, call in enumerate(reply.tool_calls):
            yield _chunk(meta, {"tool_calls": [{"index": index, **call}]})
    else:
        for position, token in enumerate(_TOKEN_RE.findall(reply.content or "")):
            if position and token_delay > 0:
                await asyncio.sleep(token_delay)
            yield _chunk(meta, {"content": token})
    yield _chunk(meta, {}, reply.finish_reason)
    if include_usage:
        usage = {**meta, "object": "chat.completion.chunk", "choices": [], "usage": reply.usage}
        yield b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def _models() -> dict[str, Any]:
    """Return the OpenAI model list."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "agentfleet-simulator"}
            for name in MODELS
        ],
    }


def create_app(config: SimulatorConfig | None = None) -> Starlette:
    """Build the simulator application; each app has its own counters and faults."""
    config = config or SimulatorConfig()
    stats = Stats()
    providers = Providers(config.record_requests)
    completions = ChatCompletions(config, stats, providers)

    async def models(request: Request) -> Response:
        return json_response(_models())

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def get_stats(request: Request) -> Response:
        return JSONResponse(stats.snapshot())

    async def reset(request: Request) -> Response:
        stats.reset()
        providers.reset()
        return JSONResponse(stats.snapshot())

    routes = [
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/p/{provider}/v1/chat/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/p/{provider}/v1/models", models, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/_sim/stats", get_stats, methods=["GET"]),
        Route("/_sim/reset", reset, methods=["POST"]),
        *admin_routes(providers),
    ]
    app = Starlette(routes=routes)
    # Exposed for in-process users (e.g. tests using an ASGI transport).
    app.state.stats = stats
    app.state.providers = providers
    return app


__all__ = ["ChatCompletions", "SimulatorConfig", "Stats", "create_app", "error_body"]
