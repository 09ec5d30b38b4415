"""OpenTelemetry traces of runs: off unless the standard ``OTEL_*`` variables ask for them.

A run is one trace: the API's ``POST /v1/runs`` span (for a run sent with ``send_task``, its
first step's span, or the sender's if its message carries one), under it step 1's task span,
under each step its LLM calls (GenAI semantic conventions), its tool-call tasks and the next
step. docs/operations.md ("Tracing") lists the spans and their attributes.

How the context travels between processes: every message carries the W3C ``traceparent``
(and ``tracestate``, ``baggage``) in its Celery headers, set from the span that publishes it
(:func:`inject`, from ``before_task_publish`` in ``agentfleet.workers.signals``), unless its
publisher chose its parent already. A step chooses for its successor (:func:`headers`): that
message is published by whichever tool call finishes last (a chord's body, or a chain's next
link), so the context current then would be the tool call's. Celery keeps a message's headers
when it retries it, so a retried step is a sibling of its first attempt. ``Task.replace``
does not carry headers over, which is why the step's own span is current while it publishes
its replacement's tool calls.

A run's record keeps the context the run was created in (its ``traceparent`` field, written
once). Code that publishes for a run outside the run's own spans (the watchdog resending a
step, a run started when another run's end frees its tenant's slot) publishes within that
context (:func:`within`), so every step of a run joins the run's trace however it was sent,
and no run joins another's. Headers are the rule, the record the fallback: a header names the
exact parent (a step, not just the run) and costs no read; the record serves the publishers
that are in none of the run's spans.

Off, the default, this module imports nothing of OpenTelemetry and makes no tracer provider,
and each helper returns at once (the LLM call's with a shared no-op): ``python -m
ops.trace_overhead`` measures what a step pays. On, ``agentfleet.tasks._otel`` does the work.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from agentfleet.tasks.errors import ConfigError

if TYPE_CHECKING:
    from agentfleet.tasks._otel import Tracing

#: The attribute every span of a run carries.
RUN_ID: Final = "agentfleet.run_id"
#: The exporters ``OTEL_TRACES_EXPORTER`` may name.
EXPORTERS: Final = frozenset({"otlp", "console", "none"})
#: What ``pip install 'agentfleet[otel]'`` brings: the modules tracing needs.
PACKAGES: Final = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")

#: Set by :func:`configure`; None: tracing is off in this process.
_impl: Tracing | None = None


class Answer(Protocol):
    """What an LLM call span reads from an answer (``agentfleet.tasks.llm.Completion``)."""

    @property
    def model(self) -> str | None: ...
    @property
    def response_id(self) -> str | None: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def finish_reason(self) -> str | None: ...


class LlmCall(Protocol):
    """The span of one LLM call, entered around the call (ended with an error if it raises)."""

    def __enter__(self) -> LlmCall: ...
    def __exit__(self, *exc: object) -> None: ...
    def answered(self, answer: Answer) -> None:
        """Record what the provider answered."""


class _Off:
    """The LLM call span when tracing is off: one shared object that does nothing."""

    __slots__ = ()

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def answered(self, answer: Answer) -> None:
        return None


_OFF: Final = _Off()


def _exporters(environ: Mapping[str, str]) -> list[str]:
    named = environ.get("OTEL_TRACES_EXPORTER", "")
    exporters = [e.strip().lower() for e in named.split(",") if e.strip()]
    if exporters:
        return exporters
    # An OTLP endpoint alone asks for OTLP, as the SDK's own configuration reads it.
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return ["otlp"] if endpoint else []


def requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces: ``OTEL_TRACES_EXPORTER`` names an
    exporter (``otlp``, ``console``), or is unset and an OTLP endpoint is set; and
    ``OTEL_SDK_DISABLED`` is not ``true``. Raises :class:`ConfigError` if they ask for what
    this process cannot do (another exporter or protocol, or the packages missing)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporters(env)
    unknown = sorted(set(exporters) - EXPORTERS)
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={env.get('OTEL_TRACES_EXPORTER')!r}: agentfleet exports "
            f"traces with otlp or console, not {', '.join(unknown)}"
        )
    exporters = [e for e in exporters if e != "none"]
    if not exporters:
        return False
    if "otlp" in exporters:
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        if protocol.strip() != "http/protobuf":
            raise ConfigError(
                f"OTLP protocol {protocol!r}: agentfleet sends traces with http/protobuf "
                "(the collector's port 4318)"
            )
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"OTEL_* variables ask for traces, but {', '.join(missing)} is not installed: "
            "pip install 'agentfleet[otel]'"
        )
    return True


def configure(service: str, instance: str = "") -> bool:
    """Start tracing in this process if :func:`requested`, once; whether it is on.

    ``service`` names the process kind (``service.name`` unless ``OTEL_SERVICE_NAME`` or
    ``OTEL_RESOURCE_ATTRIBUTES`` name it), ``instance`` this process (``service.instance.id``).
    """
    global _impl
    if _impl is None and requested():
        from agentfleet.tasks._otel import Tracing

        _impl = Tracing.start(service, instance)
    return _impl is not None


def enabled() -> bool:
    return _impl is not None


def llm_call(
    provider: str, model: str, base_url: str = "", settings: Mapping[str, Any] | None = None
) -> LlmCall:
    """The span of one chat completion of ``model`` from ``provider`` (``settings``: the
    request's model settings), to enter around the call."""
    if _impl is None:
        return _OFF
    return _impl.llm_call(provider, model, base_url, settings or {})


def event(name: str, attributes: Mapping[str, str | int | float], prefix: str = "") -> None:
    """An event on the current span (a step's wait, its retry), its attributes' names
    prefixed with ``prefix``."""
    if _impl is not None:
        _impl.event(name, {f"{prefix}{k}": v for k, v in attributes.items()})


def tag_run(run_id: str) -> None:
    """Name ``run_id`` on the current span (an API request's, once its run is known)."""
    if _impl is not None:
        _impl.tag_run(run_id)


def headers() -> dict[str, str]:
    """The current context as message headers (empty when off or outside any span)."""
    if _impl is None:
        return {}
    carrier: dict[str, str] = {}
    _impl.inject(carrier)
    return carrier


def inject(message_headers: MutableMapping[str, Any]) -> None:
    """Add the current context to a message's headers, unless they carry one already."""
    if _impl is not None and "traceparent" not in message_headers:
        _impl.inject(message_headers)


def traceparent() -> str:
    """The current context as a run record keeps it ('' when off or outside any span)."""
    return headers().get("traceparent", "")


@contextlib.contextmanager
def _attached(traceparent: str) -> Iterator[None]:
    assert _impl is not None
    token = _impl.attach(traceparent)
    try:
        yield
    finally:
        _impl.detach(token)


def within(traceparent: str) -> contextlib.AbstractContextManager[None]:
    """Make ``traceparent`` (a run record's) the current context, so what is published
    meanwhile joins that trace. A no-op when off or when the run has none."""
    if _impl is None or not traceparent:
        return contextlib.nullcontext()
    return _attached(traceparent)


def start_task(
    name: str, message_headers: Mapping[str, Any] | None, attributes: Mapping[str, Any]
) -> object:
    """Start and make current the span of a task, the child of the context its message
    carries; the handle for :func:`end_task` (None when off)."""
    if _impl is None:
        return None
    return _impl.start_task(name, message_headers or {}, attributes)


def end_task(handle: object, attributes: Mapping[str, Any], error: tuple[str, str] | None) -> None:
    """End a task's span; ``error``: (its type, its message) if the task failed."""
    if _impl is not None and handle is not None:
        _impl.end_task(handle, attributes, error)


def log_ids() -> tuple[str, str] | None:
    """(trace ID, span ID) of the current span, in hex, for log lines; None when off or
    outside any span."""
    if _impl is None:
        return None
    return _impl.log_ids()


def flush() -> None:
    """Export what is buffered (before a process exits without running ``atexit``)."""
    if _impl is not None:
        _impl.flush()
