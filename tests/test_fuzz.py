"""Property-based fuzzing of the OpenAPI schema: no 5xx, and a rejected request enqueues nothing.

The fleet has Redis and the API but no workers, so the only writes are the API's own: the
records and queued messages a request leaves behind are counted before and after each call.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentfleet.workers.queues import ALL as QUEUES
from ops.stack import Stack

EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def api_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        Path(tmp_path_factory.mktemp("fuzz")),
        env_overrides={"AGENTFLEET_CALLBACK_SECRET": "fuzz"},
    )
    try:
        stack.start_redis()
        stack.start_simulator()
        stack.start_api()
        yield stack
    finally:
        stack.stop()


def _footprint(client: redis.Redis) -> tuple[int, ...]:
    """Records of runs, tool calls and batches, and messages in every queue."""
    records = sum(
        1
        for pattern in ("af:run:*", "af:tool:*", "af:batch:*")
        for _ in client.scan_iter(match=pattern, count=1000)
    )
    return (records, *(int(client.llen(q)) for q in QUEUES))  # type: ignore[arg-type]


def test_fuzzed_requests_never_fail_the_server(api_only: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{api_only.api_url}/openapi.json")
    client = redis.Redis.from_url(api_only.redis_url or "", decode_responses=True)
    auth = {"Authorization": f"Bearer {api_only.api_key}"}
    seen: dict[int, int] = {}
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 12

    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            # The same examples every run: a random draw can miss every request the API
            # accepts, and the test then fails on what it was given, not on the API.
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(), authorized=st.booleans())
        def check(case: Any, authorized: bool) -> None:
            before = _footprint(client)
            response = case.call(base_url=api_only.api_url, headers=auth if authorized else None)
            after = _footprint(client)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.as_curl_command(), response.text)
            if response.status_code >= 400:
                assert after == before, (case.as_curl_command(), response.status_code)

        check()

    client.close()
    # The fuzzer reached both sides: accepted work and every kind of refusal.
    assert seen.get(202, 0) > 0
    for status in (401, 404, 422):
        assert seen.get(status, 0) > 0, seen
