"""Chat completions through the ``openai`` SDK; SDK errors become agentfleet errors here only."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import openai
from openai import AsyncStream, Stream
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import ValidationError

from agentfleet.tasks.errors import (
    PermanentProviderError,
    ProviderAccountError,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
)
from agentfleet.tasks.llm._client import get_async_client, get_client
from agentfleet.tasks.llm._loop import run as run_on_loop
from agentfleet.tasks.llm._transport import threads_are_greenlets
from agentfleet.tasks.output import OutputSpec
from agentfleet.tasks.setting_groups import DEFAULT_LLM_TRANSPORT, LlmTransport, ProviderConfig

CHAT_PATH = "/chat/completions"

#: 408 timeout, 409 conflict, 429 rate limit: the request itself was fine, try again.
_RETRYABLE_4XX = frozenset({408, 409, 429})
#: Unauthorized, payment required, forbidden, model not found: the provider or the account
#: we have there cannot serve the request, which another provider may.
_ACCOUNT_4XX = frozenset({401, 402, 403, 404})


@dataclass(frozen=True)
class ModelToolCall:
    """A tool call the model asked for; ``arguments`` is the raw JSON string it produced."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Completion:
    """The parts of a chat completion a step needs."""

    content: str | None
    tool_calls: list[ModelToolCall] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    #: Prompt tokens the provider served from its prompt cache (part of ``prompt_tokens``).
    cached_tokens: int = 0
    #: The model that answered, as the provider names it, and its ID of the answer.
    model: str | None = None
    response_id: str | None = None

    def assistant_message(self) -> dict[str, Any]:
        """The message to append to the transcript, in chat-completions format."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.tool_calls
            ]
        return message


def retry_after_seconds(headers: Any) -> float | None:
    """``retry-after-ms``, else ``retry-after`` (seconds or an HTTP date), else None."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


def translate(exc: openai.OpenAIError, provider: str = "default") -> ProviderError:
    """The one mapping from SDK exceptions to the agentfleet tree."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return RetryableProviderError(f"{provider}: {type(exc).__name__}: {exc}", provider)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"{provider}: HTTP {status}: {exc.message}"
        if status == 429 and getattr(exc, "code", None) == "insufficient_quota":
            return ProviderAccountError(f"{provider}: insufficient quota", provider, status)
        if status in _ACCOUNT_4XX:
            return ProviderAccountError(message, provider, status)
        if status in _RETRYABLE_4XX or status >= 500:
            wait = retry_after_seconds(exc.response.headers)
            if status == 429:
                return RateLimitedError(message, provider, wait)
            return RetryableProviderError(message, provider, wait)
        return PermanentProviderError(message, provider, status)
    if isinstance(exc, openai.APIResponseValidationError):
        return PermanentProviderError(f"{provider}: malformed response: {exc}", provider, None)
    return PermanentProviderError(f"{provider}: {type(exc).__name__}: {exc}", provider, None)


def _usage(usage: Any) -> dict[str, int]:
    """A response's token counts (none reported: zeros)."""
    if usage is None:
        return {}
    details = getattr(usage, "prompt_tokens_details", None)
    return {
        "prompt_tokens": int(usage.prompt_tokens),
        "completion_tokens": int(usage.completion_tokens),
        "cached_tokens": int(getattr(details, "cached_tokens", None) or 0),
    }


def _parse(response: Any, provider: str) -> Completion:
    # A provider that answers 200 with something that is not a chat completion is a
    # provider fault the caller cannot fix by retrying the same request.
    try:
        choice = response.choices[0]
        message = choice.message
        calls = [
            ModelToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "")
            for c in (message.tool_calls or [])
        ]
        return Completion(
            content=message.content,
            tool_calls=calls,
            finish_reason=choice.finish_reason,
            model=getattr(response, "model", None),
            response_id=getattr(response, "id", None),
            **_usage(response.usage),
        )
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        snippet = json.dumps(response)[:200] if isinstance(response, str) else repr(response)[:200]
        raise PermanentProviderError(
            f"{provider}: malformed response ({type(exc).__name__}): {snippet}", provider, None
        ) from None


#: Request header telling the provider (or a proxy in front of it) when the fleet admitted
#: the call, so queueing between admission and arrival can be measured.
ADMITTED_HEADER = "x-agentfleet-admitted-at"


class Assembly:
    """A completion put together from a streamed answer, one chunk at a time.

    Both transports feed it (``tasks/llm/_aio.py`` from its event loop), so a streamed answer
    reads the same whichever carried it.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._text: list[str] = []
        self._calls: dict[int, dict[str, str]] = {}
        self._usage: Any = None
        self._finish_reason: str | None = None
        self._model: str | None = None
        self._response_id: str | None = None

    def add(self, chunk: Any) -> list[str]:
        """Take in one chunk; the text deltas it carried, in order."""
        texts: list[str] = []
        try:
            self._usage = chunk.usage or self._usage
            # Read once, and leniently: an answer without them is still an answer.
            self._model = self._model or getattr(chunk, "model", None)
            self._response_id = self._response_id or getattr(chunk, "id", None)
            for choice in chunk.choices or []:
                delta = choice.delta
                self._finish_reason = choice.finish_reason or self._finish_reason
                if delta.content:
                    self._text.append(delta.content)
                    texts.append(delta.content)
                for call in delta.tool_calls or []:
                    part = self._calls.setdefault(
                        call.index, {"id": "", "name": "", "arguments": ""}
                    )
                    part["id"] = call.id or part["id"]
                    if call.function is not None:
                        part["name"] += call.function.name or ""
                        part["arguments"] += call.function.arguments or ""
        except (AttributeError, TypeError) as exc:
            raise PermanentProviderError(
                f"{self.provider}: malformed stream ({type(exc).__name__}: {exc})",
                self.provider,
                None,
            ) from None
        return texts

    def completion(self) -> Completion:
        """The completion the chunks taken in so far make."""
        calls = self._calls
        return Completion(
            content="".join(self._text) if self._text or not calls else None,
            tool_calls=[
                ModelToolCall(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())
            ],
            finish_reason=self._finish_reason,
            model=self._model,
            response_id=self._response_id,
            **_usage(self._usage),
        )


def _assemble(chunks: Iterable[Any], on_delta: Callable[[str], None], provider: str) -> Completion:
    """A completion from a streamed answer, handing each text delta to ``on_delta``."""
    assembly = Assembly(provider)
    for chunk in chunks:
        for text in assembly.add(chunk):
            on_delta(text)
    return assembly.completion()


@contextmanager
def sdk_errors(provider: str) -> Iterator[None]:
    """The one boundary where what the SDK raises, on either transport, becomes agentfleet's."""
    try:
        yield
    except openai.OpenAIError as exc:
        raise translate(exc, provider) from None
    except (json.JSONDecodeError, ValidationError) as exc:
        raise PermanentProviderError(f"{provider}: malformed response: {exc}", provider) from None


@dataclass(frozen=True)
class CallOptions:
    """What an LLM call sends besides its model, messages and tools: the run's model settings
    (:meth:`agentfleet.tasks.models.ModelSettings.body`) and its output schema."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    output: OutputSpec | None = None


#: Settings about tool use: a request without tools must not carry them (providers refuse it).
_TOOL_SETTINGS = ("tool_choice", "parallel_tool_calls")


def request_body(
    provider: ProviderConfig,
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    options: CallOptions | None = None,
) -> dict[str, Any]:
    """The JSON body of a chat completion, as ``chat.completions.create`` would post it with
    the same arguments (tests/test_model_settings.py compares the two on the wire)."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    if tools:
        body["tools"] = tools
    if options is None:
        return body
    settings = dict(options.settings)
    if not tools:
        for name in _TOOL_SETTINGS:
            settings.pop(name, None)
    if not provider.reasoning_effort:
        settings.pop("reasoning_effort", None)
    body |= settings
    if options.output is not None:
        if provider.structured_outputs:
            body["response_format"] = options.output.response_format()
        else:
            body["messages"] = _with_instruction(messages, options.output.instruction())
    return body


def _with_instruction(messages: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """``messages`` with ``instruction`` added to the system prompt (made one if none)."""
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        return [
            {**first, "content": f"{first.get('content') or ''}\n\n{instruction}"},
            *messages[1:],
        ]
    return [{"role": "system", "content": instruction}, *messages]


def complete(
    provider: ProviderConfig,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    model: str,
    admitted_at: float | None = None,
    on_delta: Callable[[str], None] | None = None,
    options: CallOptions | None = None,
    transport: LlmTransport = DEFAULT_LLM_TRANSPORT,
) -> Completion:
    """One chat completion. Raises only :class:`~agentfleet.tasks.errors.ProviderError` subclasses.

    With ``on_delta`` the answer is streamed and each text delta is handed to it as it comes,
    in the calling thread. ``transport`` (the ``llm_transport`` setting) says which client
    carries the call: ``aiohttp`` hands it to the process's event loop and waits for it,
    ``httpx`` makes it in the calling thread. Where threads are greenlets (gevent, eventlet)
    it is always ``httpx``: a loop in a patched thread would run on the hub, not beside it.
    Both send the same request and raise the same errors.
    """
    body = request_body(provider, model, messages, tools, options)
    request_options: Any = {}
    if admitted_at is not None:
        request_options["headers"] = {ADMITTED_HEADER: repr(admitted_at)}
    if on_delta is not None:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    if transport == "aiohttp" and not threads_are_greenlets():
        client = get_async_client(provider)
        return run_on_loop(
            lambda relay: _complete_async(client, provider.name, body, request_options, relay),
            on_delta,
        )
    return _complete(get_client(provider), provider.name, body, request_options, on_delta)


# Both post the request ``chat.completions.create`` makes, with the SDK's own client (its HTTP
# pool, timeouts, errors and response types), minus create()'s walk of every parameter against
# its TypedDict: ours are plain JSON, which that walk returns as it is, and it was more than
# half the client CPU of a call (docs/performance.md, "The LLM client").


def _complete(
    client: openai.OpenAI,
    name: str,
    body: dict[str, Any],
    request_options: Any,
    on_delta: Callable[[str], None] | None,
) -> Completion:
    with sdk_errors(name):
        if on_delta is None:
            answer = client.post(
                CHAT_PATH, body=body, options=request_options, cast_to=ChatCompletion
            )
            return _parse(answer, name)
        stream = client.post(
            CHAT_PATH,
            body=body,
            options=request_options,
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=Stream[ChatCompletionChunk],
        )
        with stream:
            return _assemble(stream, on_delta, name)


async def _complete_async(
    client: openai.AsyncOpenAI,
    name: str,
    body: dict[str, Any],
    request_options: Any,
    relay: Callable[[str], None] | None,
) -> Completion:
    with sdk_errors(name):
        if relay is None:
            answer = await client.post(
                CHAT_PATH, body=body, options=request_options, cast_to=ChatCompletion
            )
            return _parse(answer, name)
        stream = await client.post(
            CHAT_PATH,
            body=body,
            options=request_options,
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=AsyncStream[ChatCompletionChunk],
        )
        async with stream:
            assembly = Assembly(name)
            async for chunk in stream:
                for text in assembly.add(chunk):
                    relay(text)
            return assembly.completion()
