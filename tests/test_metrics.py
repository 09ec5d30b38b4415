"""``GET /metrics``: fleet-wide counters move by exactly the work done, read from real Redis."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from agentfleet.tasks.errors import RetryableProviderError, RunFailed
from agentfleet.tasks.llm import get_guard
from agentfleet.tasks.llm._guard import ProviderGuard
from agentfleet.tasks.metrics import (
    DENIAL_REASONS,
    FINISHED_STATUSES,
    RUN_BUCKETS,
    Recorder,
    bucket_field,
)
from agentfleet.tasks.setting_groups import ProviderConfig
from agentfleet.tasks.states import RunStatus
from agentfleet.workers import queues
from ops.stack import Stack, free_port, wait_for
from tests.conftest import Fleet

Labels = tuple[tuple[str, str], ...]


class Scrape:
    """One ``/metrics`` answer, parsed with prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, Labels], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for a labelled series that does not exist yet."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def scrape(fleet: Fleet) -> Scrape:
    response = fleet.http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


def wait_quiet(fleet: Fleet, wait: Callable[..., None]) -> None:
    """Wait until no run of earlier tests is still going, so deltas are ours alone."""

    def quiet() -> bool:
        keys = sorted(fleet.run_keys())
        statuses = [fleet.redis.hget(k, "status") for k in keys]
        return all(s is None or RunStatus(s).terminal for s in statuses)

    wait(quiet, 60, "earlier runs to finish")


def run_record(fleet: Fleet, run_id: str) -> dict[str, str]:
    return dict(fleet.redis.hgetall(f"{fleet.settings.redis.key_prefix}:run:{run_id}"))


@pytest.fixture
def quiet_fleet(fleet: Fleet, wait: Callable[..., None]) -> Fleet:
    wait_quiet(fleet, wait)
    return fleet


def final_record(fleet: Fleet, run_id: str) -> dict[str, Any]:
    """A run's final record from its Celery result: returned, or carried by RunFailed."""
    final = fleet.app.AsyncResult(run_id).get(timeout=60, propagate=False)
    return dict(final.record if isinstance(final, RunFailed) else final)


def test_counters_move_by_exactly_the_work_done(
    quiet_fleet: Fleet, wait: Callable[..., None]
) -> None:
    fleet = quiet_fleet
    before = scrape(fleet)

    ok = fleet.client.create_run('call text_stats {"text": "two words"}').id  # 2 steps
    loop = fleet.client.create_run('[[loop]] call text_stats {"text": "x"}', max_steps=1).id
    sent = fleet.app.send_task(
        "agentfleet.run", kwargs={"request": {"input": "from send_task"}}, queue="agents"
    ).id
    invalid = fleet.app.send_task(
        "agentfleet.run", kwargs={"request": {"input": ""}}, queue="agents"
    ).id
    ids = [ok, loop, str(sent), str(invalid)]
    finals = {run_id: final_record(fleet, run_id) for run_id in ids}
    assert [finals[i]["status"] for i in ids] == ["succeeded", "failed", "succeeded", "failed"]
    assert finals[loop]["error"]["code"] == "max_steps_exceeded"
    assert finals[str(invalid)]["error"]["code"] == "invalid_request"
    records = [run_record(fleet, run_id) for run_id in ids]

    # A run's end is counted right after its final record is written: allow for that moment.
    def all_counted() -> bool:
        after = scrape(fleet)
        return after.get("agentfleet_run_duration_seconds_count") - before.get(
            "agentfleet_run_duration_seconds_count"
        ) >= len(ids)

    wait(all_counted, 10, "the four runs to be counted")
    after = scrape(fleet)

    def delta(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, **labels)

    assert delta("agentfleet_runs_enqueued_total") == 4
    expected = {"succeeded": 2, "failed": 2, "cancelled": 0}
    for status in FINISHED_STATUSES:
        assert delta("agentfleet_runs_finished_total", status=status) == expected[status]

    # Run latency: every run in the bucket its own record puts it in, and the exact sum.
    latencies = [float(r["finished_at"]) - float(r["created_at"]) for r in records]
    assert delta("agentfleet_run_duration_seconds_count") == 4
    assert delta("agentfleet_run_duration_seconds_sum") == pytest.approx(sum(latencies), abs=1e-6)
    for labels, _ in after.series("agentfleet_run_duration_seconds_bucket").items():
        le = float(dict(labels)["le"])
        grew = delta("agentfleet_run_duration_seconds_bucket", le=dict(labels)["le"])
        assert grew == sum(1 for s in latencies if s <= le), le
    assert {bucket_field(RUN_BUCKETS, s) for s in latencies} <= {
        dict(labels)["le"] for labels in after.series("agentfleet_run_duration_seconds_bucket")
    }

    # Steps and tokens: exactly the LLM calls and usage the run records report.
    llm_calls = sum(int(r["llm_calls"]) for r in records)
    assert llm_calls == 2 + 1 + 1 + 0
    assert delta("agentfleet_step_duration_seconds_count") == llm_calls
    assert delta("agentfleet_step_duration_seconds_sum") > 0
    who = {"provider": "default", "model": fleet.settings.llm.llm_model}
    assert delta("agentfleet_llm_calls_total", **who) == llm_calls
    for kind in ("prompt", "completion"):
        reported = sum(int(r[f"{kind}_tokens"]) for r in records)
        assert reported > 0
        assert delta("agentfleet_llm_tokens_total", **who, kind=kind) == reported

    # Gauges: a depth per queue (drained by now), the unacked count, histograms typed.
    for queue in queues.ALL:
        assert ("agentfleet_queue_messages", (("queue", queue),)) in after.samples
        assert after.get("agentfleet_queue_messages", queue=queue) >= 0
    assert after.get("agentfleet_broker_unacked_messages") >= 0
    assert after.types["agentfleet_run_duration_seconds"] == "histogram"
    assert after.types["agentfleet_step_duration_seconds"] == "histogram"
    assert after.types["agentfleet_runs_finished"] == "counter"


def test_queue_depth_counts_waiting_messages(tmp_path: Path) -> None:
    # A fleet with no workers at all, so nothing takes the messages while they are counted.
    with Stack(tmp_path) as stack:
        stack.start_redis()
        api = httpx.Client(base_url=stack.start_api(), timeout=10)
        app = stack.celery_app()
        try:
            before = Scrape(api.get("/metrics").text)
            assert {before.get("agentfleet_queue_messages", queue=q) for q in queues.ALL} == {0}
            resume = ("no-such-run", 1, {})  # a harmless task when it does run
            app.send_task("agentfleet.run", kwargs={"request": {"input": "a"}})
            app.send_task("agentfleet.run", kwargs={"request": {"input": "b"}})
            app.send_task("agentfleet.tool.call", args=({"id": "t", "name": "calculator"},))
            app.send_task("agentfleet.agent.resume", args=resume)
            # kombu keeps a message with a priority in a list of its own: counted as well.
            app.send_task("agentfleet.agent.resume", args=resume, priority=5)
            after = Scrape(api.get("/metrics").text)
        finally:
            api.close()
            app.close()
    depth = {q: after.get("agentfleet_queue_messages", queue=q) for q in queues.ALL}
    assert depth == {queues.AGENTS: 2, queues.TOOLS: 1, queues.BATCH: 2}
    assert after.get("agentfleet_broker_unacked_messages") == 0


@pytest.fixture
def default_guard(quiet_fleet: Fleet) -> Iterator[ProviderGuard]:
    guard = get_guard(quiet_fleet.settings, quiet_fleet.settings.llm.provider_list[0])
    try:
        yield guard
    finally:
        guard.breaker.close()  # leave the shared fleet's provider as we found it


def test_breaker_state_and_denials(quiet_fleet: Fleet, default_guard: ProviderGuard) -> None:
    fleet, guard = quiet_fleet, default_guard
    name = guard.provider.name
    before = scrape(fleet)
    assert before.get("agentfleet_provider_breaker_state", provider=name) == 0

    for _ in range(guard.provider.fail_max):
        admission = guard.admit(10)
        assert admission.ok
        guard.failed(admission, RetryableProviderError(f"{name}: HTTP 500: test", name))
    opened = scrape(fleet)
    assert opened.get("agentfleet_provider_breaker_state", provider=name) == 2

    assert guard.admit(10).outcome == "open"
    denied = scrape(fleet)
    grew = denied.get(
        "agentfleet_provider_admission_denials_total", provider=name, reason="breaker_open"
    ) - before.get(
        "agentfleet_provider_admission_denials_total", provider=name, reason="breaker_open"
    )
    assert grew == 1

    guard.breaker.half_open()
    assert scrape(fleet).get("agentfleet_provider_breaker_state", provider=name) == 1
    guard.breaker.close()
    closed = scrape(fleet)
    assert closed.get("agentfleet_provider_breaker_state", provider=name) == 0
    assert closed.get("agentfleet_provider_consecutive_failures", provider=name) == 0
    # Every configured provider has every reason, zero or not.
    for reason in DENIAL_REASONS:
        assert (
            "agentfleet_provider_admission_denials_total",
            (("provider", name), ("reason", reason)),
        ) in closed.samples


def test_rate_limit_denials_name_the_limit(quiet_fleet: Fleet) -> None:
    fleet = quiet_fleet
    suffix = free_port()  # fresh limiter state in the session's Redis
    # One request and 100 tokens a minute: the first call may go (a call bigger than the
    # burst goes once the bucket is full); the next is refused by both limits.
    both = ProviderConfig(name=f"m-both-{suffix}", base_url="http://127.0.0.1:9/v1", rpm=1, tpm=100)
    rpm_only = ProviderConfig(name=f"m-rpm-{suffix}", base_url="http://127.0.0.1:9/v1", rpm=1)
    before = scrape(fleet)
    for provider in (both, rpm_only):
        guard = get_guard(fleet.settings, provider)
        assert guard.admit(1000).ok
        assert guard.admit(1000).outcome == "limited"
    after = scrape(fleet)

    def grew(provider: ProviderConfig, reason: str) -> float:
        labels = {"provider": provider.name, "reason": reason}
        name = "agentfleet_provider_admission_denials_total"
        return after.get(name, **labels) - before.get(name, **labels)

    assert [grew(both, r) for r in ("rpm", "tpm", "breaker_open")] == [1, 1, 0]
    assert [grew(rpm_only, r) for r in ("rpm", "tpm", "breaker_open")] == [1, 0, 0]


def test_in_flight_runs(quiet_fleet: Fleet, wait: Callable[..., None]) -> None:
    fleet = quiet_fleet
    base = scrape(fleet).get("agentfleet_runs_in_flight")
    run_id = fleet.client.create_run("[[latency:2]] slow").id

    def in_flight(count: float) -> Callable[[], bool]:
        return lambda: scrape(fleet).get("agentfleet_runs_in_flight") == count

    wait(in_flight(base + 1), 10, "the run to count as in flight")
    assert fleet.client.wait(run_id, timeout=30).status == "succeeded"
    wait(in_flight(base), 10, "the finished run to leave the in-flight count")


def test_metrics_is_503_when_redis_is_down(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    stack = Stack(tmp_path, redis_url=dead)
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "agentfleet.producer.api:app", "--port", str(port)]
    try:
        stack.spawn("api", argv)
        url = f"http://127.0.0.1:{port}/metrics"
        answers: list[httpx.Response] = []

        def answered() -> bool:
            answers.append(httpx.get(url, timeout=30))
            return True

        wait_for(answered, 30, "the API to answer")
        response = answers[-1]
        assert response.status_code == 503
        assert "unavailable" in response.json()["detail"]
    finally:
        stack.stop()


def test_recording_never_raises_when_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    # No retries: redis-py's default backoff would take 4 s per call to say the same.
    dead = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0), decode_responses=True)
    recorder = Recorder(dead, "af")
    with caplog.at_level(logging.WARNING, logger="agentfleet.tasks.metrics"):
        recorder.admission("default", ["open", "1.0", "0", "0"])
        recorder.admission("default", ["limited", "1.0", "0", "0", "rpm,tpm"])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert all(m.startswith("metrics: could not record") for m in messages)
