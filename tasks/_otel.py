"""The OpenTelemetry side of :mod:`agentfleet.tasks.tracing`, imported only when tracing is on.

The SDK reads its own variables: ``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, timeout,
compression), ``OTEL_BSP_*`` (the batch span processor), ``OTEL_TRACES_SAMPLER``,
``OTEL_PROPAGATORS``, ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from contextvars import Token
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from agentfleet.tasks import tracing

#: Model settings recorded on an LLM call's span, by their GenAI attribute.
_REQUEST_SETTINGS: Final = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}
#: Longest status message kept from an exception (a provider's error body can be long).
_MESSAGE_CHARS: Final = 500


class _RunIdFromParent(SpanProcessor):
    """Gives a span its parent's ``agentfleet.run_id`` when the parent is a span of this
    process: an LLM call's span (the router knows no run) and a tool's own spans name the run
    of the task they run in."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        if span.attributes and tracing.RUN_ID in span.attributes:
            return
        parent = trace.get_current_span(parent_context)
        attributes = getattr(parent, "attributes", None)  # remote parents have none
        run_id = attributes.get(tracing.RUN_ID) if attributes else None
        if run_id:
            span.set_attribute(tracing.RUN_ID, run_id)


def _exporters() -> list[SpanExporter]:
    made: list[SpanExporter] = []
    for name in tracing._exporters(os.environ):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            made.append(OTLPSpanExporter())
        elif name == "console":
            made.append(ConsoleSpanExporter())
    return made


def _resource(service: str, instance: str) -> Resource:
    """The SDK's resource from the environment, with our names for what it leaves unnamed."""
    detected = Resource.create()
    ours: dict[str, str] = {}
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        ours[SERVICE_NAME] = service
    if instance and SERVICE_INSTANCE_ID not in detected.attributes:
        ours[SERVICE_INSTANCE_ID] = instance
    return detected.merge(Resource(ours))


def _error(span: trace.Span, kind: str, message: str) -> None:
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, message[:_MESSAGE_CHARS]))


class _LlmSpan:
    """One chat completion, with the GenAI semantic conventions' attributes."""

    def __init__(
        self,
        tracer: Tracer,
        provider: str,
        model: str,
        base_url: str,
        settings: Mapping[str, Any],
    ) -> None:
        self._tracer, self._model = tracer, model
        self._attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            # The attribute's name before semantic conventions 1.37, still what many backends read.
            "gen_ai.system": provider,
            "gen_ai.request.model": model,
        }
        if base_url:
            url = urlsplit(base_url)
            if url.hostname:
                self._attributes["server.address"] = url.hostname
                self._attributes["server.port"] = url.port or (443 if url.scheme == "https" else 80)
        for key, name in _REQUEST_SETTINGS.items():
            value = settings.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._attributes[name] = value
        self._span: trace.Span = trace.INVALID_SPAN
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> _LlmSpan:
        self._span = self._tracer.start_span(
            f"chat {self._model}", kind=SpanKind.CLIENT, attributes=self._attributes
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def answered(self, answer: tracing.Answer) -> None:
        span = self._span
        if answer.model:
            span.set_attribute("gen_ai.response.model", answer.model)
        if answer.response_id:
            span.set_attribute("gen_ai.response.id", answer.response_id)
        span.set_attribute("gen_ai.usage.input_tokens", answer.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", answer.completion_tokens)
        if answer.cached_tokens:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", answer.cached_tokens)
        if answer.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [answer.finish_reason])

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
        exc = exc_info[1] if len(exc_info) > 1 else None
        if isinstance(exc, BaseException):
            _error(self._span, type(exc).__name__, str(exc))
        self._span.end()


@dataclass(frozen=True)
class _TaskSpan:
    """A running task's span, and the token that made it current (detached at its end)."""

    span: trace.Span
    token: Token[otel_context.Context]


class Tracing:
    """This process's tracer provider, its tracer, and the helpers over them."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("agentfleet")

    @classmethod
    def start(cls, service: str, instance: str) -> Tracing:
        """A provider exporting to the configured exporters, made the global one (so that
        FastAPI's request spans, and any instrumentation a user adds, go to it too)."""
        provider = TracerProvider(resource=_resource(service, instance))
        provider.add_span_processor(_RunIdFromParent())
        for exporter in _exporters():
            # Forked pool children restart the processor's thread (the SDK's at-fork hook).
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        return cls(provider)

    def llm_call(
        self, provider: str, model: str, base_url: str, settings: Mapping[str, Any]
    ) -> _LlmSpan:
        return _LlmSpan(self.tracer, provider, model, base_url, settings)

    def event(self, name: str, attributes: Mapping[str, str | int | float]) -> None:
        trace.get_current_span().add_event(name, dict(attributes))

    def tag_run(self, run_id: str) -> None:
        trace.get_current_span().set_attribute(tracing.RUN_ID, run_id)

    def inject(self, carrier: MutableMapping[str, Any]) -> None:
        propagate.inject(carrier)

    def attach(self, traceparent: str) -> Token[otel_context.Context]:
        return otel_context.attach(propagate.extract({"traceparent": traceparent}))

    def detach(self, token: Token[otel_context.Context]) -> None:
        otel_context.detach(token)

    def start_task(
        self, name: str, message_headers: Mapping[str, Any], attributes: Mapping[str, Any]
    ) -> _TaskSpan:
        parent = propagate.extract(message_headers)
        span = self.tracer.start_span(
            name, context=parent, kind=SpanKind.CONSUMER, attributes=dict(attributes)
        )
        return _TaskSpan(span, otel_context.attach(trace.set_span_in_context(span, parent)))

    def end_task(
        self, handle: object, attributes: Mapping[str, Any], error: tuple[str, str] | None
    ) -> None:
        assert isinstance(handle, _TaskSpan)
        otel_context.detach(handle.token)
        handle.span.set_attributes(dict(attributes))
        if error is not None:
            _error(handle.span, *error)
        handle.span.end()

    def log_ids(self) -> tuple[str, str] | None:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return format(context.trace_id, "032x"), format(context.span_id, "016x")

    def flush(self) -> None:
        self.provider.force_flush(timeout_millis=5000)
