"""OpenTelemetry traces: a run is one trace from the API's request through every step, LLM call
and tool call, exported over OTLP/HTTP; with no OTEL_* variables, nothing of it runs.

The fleet exports to a receiver this module runs itself: a small HTTP server decoding each
``ExportTraceServiceRequest``.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from agentfleet.producer.api import UNTRACED_PATHS
from agentfleet.simulator.faults import clear_faults, set_faults
from agentfleet.tasks import names, tracing
from agentfleet.tasks.errors import ConfigError
from agentfleet.tasks.llm import resolve_chain
from agentfleet.tasks.models import RunRequest
from agentfleet.tasks.store import RunStore
from ops.stack import PoolSpec, Stack, worker_command
from tests.conftest import Fleet, private_fleet

#: The provider the fleet calls, on the simulator (so faults can be set for it alone).
PROVIDER = "sim"
TWO_CALLS = 'call calculator {"expression": "1+1"} call calculator {"expression": "2+2"}'
CALCULATOR = "execute_tool calculator"


@dataclass
class Span:
    """A span as the receiver decoded it (IDs in hex; ``parent_id`` '' for a root)."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    service: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    error: bool
    start: int


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


@dataclass
class Receiver:
    """Spans received over OTLP/HTTP (``POST /v1/traces``, protobuf)."""

    port: int = 0
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = _attributes(resource_spans.resource.attributes).get("service.name", "")
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    span = Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=s.kind,
                        service=str(service),
                        attributes=_attributes(s.attributes),
                        events=[(e.name, _attributes(e.attributes)) for e in s.events],
                        error=s.status.code == Status.STATUS_CODE_ERROR,
                        start=s.start_time_unix_nano,
                    )
                    with self.lock:
                        self.spans.append(span)

    def of_run(self, run_id: str) -> list[Span]:
        with self.lock:
            return sorted(
                (s for s in self.spans if s.attributes.get(tracing.RUN_ID) == run_id),
                key=lambda s: s.start,
            )

    def all(self) -> list[Span]:
        with self.lock:
            return list(self.spans)

    def of_trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _serve(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            receiver.take(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass  # one line per export would bury the test's own output

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    got = Receiver()
    server = _serve(got)
    got.port = int(server.server_address[1])
    yield got
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tfleet(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Fleet]:
    def start(stack: Stack) -> None:
        stack.start_redis()
        sim = stack.start_simulator().removesuffix("/v1")
        stack.env_overrides = {
            "AGENTFLEET_PROVIDERS": json.dumps(
                [{"name": PROVIDER, "base_url": f"{sim}/p/{PROVIDER}/v1", "timeout": 5}]
            ),
            "AGENTFLEET_LLM_MAX_RETRIES": "4",
            "AGENTFLEET_RETRY_BACKOFF_BASE": "0.2",
            "AGENTFLEET_MAX_RETRY_COUNTDOWN": "5",
            "AGENTFLEET_LOG_FORMAT": "json",
            # A run that makes no progress for 3 s more than its stage may take is resent.
            "AGENTFLEET_STALL_TIMEOUT": "3",
            "AGENTFLEET_WATCHDOG_INTERVAL": "0.5",
            # A root worker warns in plain text before logging is set up (tests/test_logs.py).
            "PYTHONWARNINGS": "ignore:You're running the worker with superuser privileges",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: spans arrive within moments
        }
        stack.start_worker(PoolSpec("agents", "threads", 20))
        stack.start_worker(PoolSpec("tools", "prefork", 2))
        stack.start_worker(PoolSpec("batch", "prefork", 1))
        stack.start_api()

    with private_fleet(Stack(Path(tmp_path_factory.mktemp("tracing"))), start, 3) as fleet:
        yield fleet


def _spans_of(
    receiver: Receiver, run_id: str, enough: Callable[[list[Span]], bool], wait: Callable[..., None]
) -> list[Span]:
    """The run's spans once ``enough`` says they have all arrived."""
    wait(lambda: enough(receiver.of_run(run_id)), 30, f"the spans of run {run_id}")
    return receiver.of_run(run_id)


def _named(spans: list[Span], name: str) -> list[Span]:
    return [s for s in spans if s.name == name]


def _children(spans: list[Span], parent: Span, name: str | None = None) -> list[Span]:
    return [s for s in spans if s.parent_id == parent.span_id and name in (None, s.name)]


def _one(spans: list[Span]) -> Span:
    assert len(spans) == 1, [(s.name, s.attributes) for s in spans]
    return spans[0]


def _dispatching(steps: list[Span]) -> Span:
    """The attempt of a step that went on (a step may be retried while the API accepts it)."""
    return _one([s for s in steps if s.attributes.get("celery.state") in ("IGNORED", "SUCCESS")])


def _ended(spans: list[Span]) -> bool:
    """Whether the span of the task that ended the run has arrived, and with it those its
    process ended before it (each process exports its spans in the order they end)."""
    return any(s.attributes.get("celery.state") == "SUCCESS" for s in spans)


def _check_llm_call(span: Span, finish_reason: str) -> None:
    attributes = span.attributes
    assert span.kind == SpanProto.SpanKind.SPAN_KIND_CLIENT
    assert span.name == f"chat {attributes['gen_ai.request.model']}"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == PROVIDER
    assert attributes["gen_ai.system"] == PROVIDER
    assert attributes["gen_ai.response.model"] == attributes["gen_ai.request.model"]
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == [finish_reason]
    assert attributes["server.address"] == "127.0.0.1"
    assert not span.error


def test_a_run_is_one_trace_of_its_request_steps_llm_and_tool_calls(
    tfleet: Fleet, receiver: Receiver, wait: Callable[..., None]
) -> None:
    run = tfleet.client.run(TWO_CALLS, timeout=60)
    assert run.status == "succeeded"

    def ended(spans: list[Span]) -> bool:
        # Each process exports on its own: the API, the agents worker, each tools child.
        last = [s for s in spans if s.name == "agentfleet.agent.step"]
        names = [s.name for s in spans]
        return _ended(last) and "POST /v1/runs" in names and names.count(CALCULATOR) == 2

    named = _spans_of(receiver, run.id, ended, wait)
    post = _one(_named(named, "POST /v1/runs"))
    assert post.kind == SpanProto.SpanKind.SPAN_KIND_SERVER
    assert post.service == "agentfleet-api"
    assert post.attributes["http.route"] == "/v1/runs"
    assert post.attributes["http.response.status_code"] == 202
    # The run's trace is its request's; every span in it names the run (none of another run,
    # nor one without a run, joined it). Polls of the run are requests of their own.
    spans = receiver.of_trace(post.trace_id)
    assert {s.attributes.get(tracing.RUN_ID) for s in spans} == {run.id}
    assert {s.name for s in named if s not in spans} <= {"GET /v1/runs/{run_id}"}

    firsts = _named(spans, "agentfleet.run")
    assert {s.parent_id for s in firsts} == {post.span_id}, "step 1 is the request's child"
    step1 = _dispatching(firsts)
    assert step1.kind == SpanProto.SpanKind.SPAN_KIND_CONSUMER
    assert step1.service == "agentfleet-worker"
    assert step1.attributes["agentfleet.step"] == 1
    assert step1.attributes["messaging.destination.name"] == "agents"
    assert not step1.error  # replaced by its tool calls: Celery's control flow, not a failure

    tools = _children(spans, step1, CALCULATOR)
    assert len(tools) == 2
    assert sorted(t.attributes["agentfleet.tool_call.id"] for t in tools) == [
        f"{run.id}-1-0",
        f"{run.id}-1-1",
    ]
    for tool in tools:
        assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
        assert tool.attributes["gen_ai.tool.name"] == "calculator"
        assert tool.attributes["gen_ai.tool.call.id"]
        assert tool.attributes["agentfleet.step"] == 1
        assert tool.attributes["messaging.destination.name"] == "tools"
        assert not tool.error
    _check_llm_call(_one(_children(spans, step1, "chat sim-1")), "tool_calls")

    # The next step is the first step's child, not the tool call that published it.
    step2 = _dispatching(_children(spans, step1, "agentfleet.agent.step"))
    assert step2.attributes["agentfleet.step"] == 2
    _check_llm_call(_one(_children(spans, step2, "chat sim-1")), "stop")
    assert not _children(spans, step2, CALCULATOR)

    # Probes and scrapes make no span.
    assert tfleet.http.get("/metrics").status_code == 200
    probes = [s for s in receiver.all() if s.attributes.get("url.path") in UNTRACED_PATHS]
    assert not probes

    # The logs of the run's steps name its trace, and the span each line was logged in.
    agents = next(p for p in tfleet.stack.procs if p.name.startswith("worker-agents"))
    lines = [json.loads(line) for line in agents.log.read_text().splitlines()]
    ours = [e for e in lines if e.get("run_id") == run.id]
    assert ours
    assert {e.get("trace_id") for e in ours} == {post.trace_id}
    assert {e.get("span_id") for e in ours} <= {s.span_id for s in spans}


def test_a_wait_and_a_retry_are_events_of_their_steps(
    tfleet: Fleet, receiver: Receiver, wait: Callable[..., None]
) -> None:
    sim = tfleet.stack.simulator_url.removesuffix("/v1")

    def calls() -> int:
        reply = tfleet.sim.get(f"/_sim/providers/{PROVIDER}/calls")
        return len(reply.json()["times"])

    before = calls()
    # The provider answers 429 with Retry-After: 2 s; the fleet holds every call to it meanwhile.
    set_faults(sim, PROVIDER, status=429, retry_after=2)
    try:
        limited = tfleet.client.create_run("limited")
        wait(lambda: calls() > before, 20, "the rate-limited call")
    finally:
        clear_faults(sim, PROVIDER)
    held = tfleet.client.create_run("held")
    runs = [tfleet.client.wait(r.id, timeout=30) for r in (limited, held)]
    assert [r.status for r in runs] == ["succeeded", "succeeded"]

    spans = _spans_of(receiver, limited.id, _ended, wait)
    post = _one(_named(spans, "POST /v1/runs"))
    refused = _one([s for s in _named(spans, "chat sim-1") if s.error])
    assert refused.attributes["error.type"] == "RateLimitedError"
    first = _one([s for s in spans if s.span_id == refused.parent_id])
    assert (first.name, first.attributes["celery.state"]) == ("agentfleet.run", "RETRY")
    ((event, retry),) = first.events
    assert event == "agentfleet.retry"
    assert retry["agentfleet.retry.attempt"] == 1
    assert retry["agentfleet.retry.countdown_s"] >= 2  # the provider's Retry-After
    assert not first.error  # its LLM call failed; the step goes on
    last = _dispatching(_named(spans, "agentfleet.run"))
    _check_llm_call(_one(_children(spans, last, "chat sim-1")), "stop")
    # A retried step is its first attempt's sibling: both are children of the request.
    assert first.parent_id == last.parent_id == post.span_id

    spans = _spans_of(receiver, held.id, _ended, wait)
    waits = [
        attributes
        for s in _named(spans, "agentfleet.run")
        for name, attributes in s.events
        if name == "agentfleet.wait"
    ]
    assert waits, "the held run's step recorded no wait"
    assert waits[0]["agentfleet.wait.reason"] == "providers_unavailable"
    assert waits[0]["agentfleet.wait.retry_at"]
    assert PROVIDER in waits[0]["agentfleet.wait.detail"]


def test_failures_are_errors_of_their_spans(
    tfleet: Fleet, receiver: Receiver, wait: Callable[..., None]
) -> None:
    # A tool call that answers with an error (the run goes on: the model is shown it).
    shown = tfleet.client.wait(
        tfleet.client.create_run('call calculator {"expression": "1/0"}').id, timeout=60
    )
    assert shown.status == "succeeded"
    call = tfleet.client.get_tool_call(f"{shown.id}-1-0")
    assert call.result is not None
    code = call.result["error"]["code"]
    spans = _spans_of(receiver, shown.id, lambda s: _ended(s) and bool(_named(s, CALCULATOR)), wait)
    tool = _one(_named(spans, CALCULATOR))
    assert tool.error
    assert tool.attributes["error.type"] == code
    # A request no provider would take fails the run at once.
    failed = tfleet.client.wait(tfleet.client.create_run("[[error:400]]").id, timeout=60)
    assert failed.status == "failed"
    assert failed.error is not None

    def ended(spans: list[Span]) -> bool:
        return any(s.attributes.get("celery.state") == "FAILURE" for s in spans)

    spans = _spans_of(receiver, failed.id, ended, wait)
    step = _one([s for s in spans if s.attributes.get("celery.state") == "FAILURE"])
    assert step.error
    assert step.attributes["error.type"] == failed.error.code
    refused = _one(_children(spans, step, "chat sim-1"))
    assert refused.error
    assert refused.attributes["error.type"] == "PermanentProviderError"


def test_a_batch_is_one_trace(tfleet: Fleet, receiver: Receiver, wait: Callable[..., None]) -> None:
    accepted = tfleet.client.create_batch([{"input": "one"}, {"input": "two"}])
    batch = tfleet.client.wait_batch(accepted.id, timeout=60)
    assert batch.counts.succeeded == 2
    runs = [_spans_of(receiver, item.id, _ended, wait) for item in batch.items]

    def dispatches() -> list[Span]:
        return [s for s in receiver.all() if s.name == names.BATCH_DISPATCH]

    wait(lambda: len(dispatches()) == 1, 10, "the batch's dispatch span")
    (dispatch,) = dispatches()
    (post,) = [s for s in receiver.of_trace(dispatch.trace_id) if s.name == "POST /v1/batches"]
    assert dispatch.parent_id == post.span_id
    for spans in runs:
        # Polls of the batch's runs (none here) would be traces of their own.
        assert {s.trace_id for s in spans if not s.name.startswith("GET ")} == {post.trace_id}
        assert {s.parent_id for s in _named(spans, "agentfleet.run")} == {dispatch.span_id}


def test_a_step_the_watchdog_sends_joins_its_runs_trace(
    tfleet: Fleet, receiver: Receiver, wait: Callable[..., None]
) -> None:
    # A run written with no message behind it (its publish died with its producer), in a
    # trace whose context its record keeps, as the API writes it.
    settings = tfleet.settings
    store = RunStore(tfleet.redis, settings)
    run_id = f"lost-{uuid.uuid4()}"
    store.create_run(run_id, RunRequest(input="hello"), [], resolve_chain(settings, None))
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    tfleet.redis.hset(store.run_key(run_id), "traceparent", f"00-{trace_id}-{parent_id}-01")

    wait(lambda: tfleet.client.get_run(run_id).status == "succeeded", 30, "the resent run")
    assert tfleet.redis.hget(store.run_key(run_id), "watchdog_resends") == "1"
    spans = _spans_of(receiver, run_id, _ended, wait)
    step = _dispatching(_named(spans, "agentfleet.run"))
    assert (step.trace_id, step.parent_id) == (trace_id, parent_id)
    _check_llm_call(_one(_children(spans, step, "chat sim-1")), "stop")


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_the_otel_variables_turn_tracing_on(environ: dict[str, str], on: bool) -> None:
    assert tracing.requested(environ) is on


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "zipkin"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
    ],
)
def test_what_the_fleet_cannot_export_is_refused_by_name(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        tracing.requested(environ)


def _run_without_otel(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``argv`` run to its end with this environment less its OTEL_* variables, plus ``env``."""
    inherited = {k: v for k, v in os.environ.items() if not k.upper().startswith("OTEL_")}
    return subprocess.run(
        argv, env=inherited | env, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_worker_asked_for_an_exporter_it_lacks_stops_at_start() -> None:
    argv = worker_command(PoolSpec("agents", "threads", 2), "refused@%h")
    done = _run_without_otel(argv, OTEL_TRACES_EXPORTER="zipkin")
    assert done.returncode != 0
    assert "OTEL_TRACES_EXPORTER='zipkin'" in done.stderr


#: Builds the worker's app and the API as their processes do, goes through what a step calls,
#: and reports what that loaded and connected.
UNTRACED_PROCESS = """
import json, sys
from celery.signals import before_task_publish, task_postrun, task_prerun
from opentelemetry import trace
from agentfleet import workers
from agentfleet.producer.api import create_api
from agentfleet.tasks import tracing

create_api(celery_app=workers.app)
with tracing.llm_call("p", "m") as span:
    span.answered(None)
tracing.event("agentfleet.wait", {"reason": "budget"})
print(json.dumps({
    "on": tracing.enabled(),
    "receivers": [len(s.receivers) for s in (before_task_publish, task_prerun, task_postrun)],
    "loaded": sorted(
        m for m in sys.modules
        if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter"))
        or m == "agentfleet.tasks._otel"
    ),
    "provider": type(trace.get_tracer_provider()).__name__,
    "shared_no_op": tracing.llm_call("a", "b") is tracing.llm_call("c", "d"),
    "headers": tracing.headers(),
    "log_ids": tracing.log_ids(),
}))
"""


def test_without_otel_variables_no_tracing_code_runs() -> None:
    done = _run_without_otel([sys.executable, "-c", UNTRACED_PROCESS])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "on": False,
        # Celery skips a signal nobody receives: no tracing work per task or per message.
        "receivers": [0, 0, 0],
        # No tracer provider, nor an exporter, is made or even loaded: nothing can be exported.
        # (redis-py loads the SDK's metrics when the SDK is installed: not ours to load.)
        "loaded": [],
        "provider": "ProxyTracerProvider",
        "shared_no_op": True,
        "headers": {},
        "log_ids": None,
    }
