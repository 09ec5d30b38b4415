"""The exception tree: retry meaning in the type, and every class survives the JSON backend."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest

from agentfleet.tasks import errors
from agentfleet.tasks.llm import retry_after_seconds, translate
from agentfleet.tasks.settings import Settings
from agentfleet.workers.factory import create_app

SAMPLES: list[errors.AgentfleetError] = [
    errors.AgentfleetError("root"),
    errors.ConfigError("bad config"),
    errors.RunNotFound("no run"),
    errors.RolledBack("gone"),
    errors.InvalidRequest.of([("input", "blank"), ("max_steps", "too many")]),
    errors.Unavailable("broker unavailable"),
    errors.InProgress("being created"),
    errors.BudgetExceeded("spent", 1_800_000_000.0),
    errors.BudgetExceeded("spent", None),
    errors.Answered('{"status": 202}'),
    errors.ProviderError("failed", "p1"),
    errors.RetryableProviderError("busy", "p1", 2.5),
    errors.RetryableProviderError("down", "p2", None),
    errors.PermanentProviderError("rejected", "p1", 400),
    errors.ProviderAccountError("refused", "p1", 401),
    errors.RateLimitedError("slow down", "p1", 2.0),
    errors.ProvidersUnavailable("all open", 3.5),
    errors.ToolError("tool"),
    errors.UnknownToolError("no tool"),
    errors.ToolArgumentsError("bad args"),
    errors.ToolExecutionError("raised"),
    errors.ToolRedeliveryLimit("lost its worker"),
]


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_exceptions_round_trip_through_the_json_result_backend(
    exc: errors.AgentfleetError,
) -> None:
    backend = create_app(Settings()).backend
    stored = json.loads(json.dumps(backend.prepare_exception(exc, "json")))
    back = backend.exception_to_python(stored)
    assert type(back) is type(exc)
    assert back.args == exc.args
    assert back.to_dict() == exc.to_dict()


def _status_error(
    status: int, headers: dict[str, str] | None = None, code: str | None = None
) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://sim/v1/chat/completions")
    body = {"error": {"message": "m", "code": code}}
    response = httpx2.Response(status, headers=headers or {}, json=body, request=request)
    client = openai.OpenAI(api_key="x", base_url="http://sim/v1")
    err = client._make_status_error("m", body=body["error"], response=response)
    client.close()
    return err


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
def test_retryable_statuses(status: int) -> None:
    assert isinstance(translate(_status_error(status)), errors.RetryableProviderError)


@pytest.mark.parametrize("status", [400, 413, 422])
def test_request_errors_are_permanent(status: int) -> None:
    err = translate(_status_error(status))
    assert type(err) is errors.PermanentProviderError
    assert err.status == status


@pytest.mark.parametrize("status", [401, 402, 403, 404])
def test_account_errors_are_permanent_at_that_provider(status: int) -> None:
    err = translate(_status_error(status))
    assert isinstance(err, errors.ProviderAccountError)
    assert err.status == status


def test_insufficient_quota_is_an_account_error_even_though_it_is_a_429() -> None:
    err = translate(_status_error(429, code="insufficient_quota"))
    assert isinstance(err, errors.ProviderAccountError)


def test_retry_after_headers() -> None:
    err = translate(_status_error(429, {"retry-after-ms": "1500", "retry-after": "9"}))
    assert isinstance(err, errors.RetryableProviderError)
    assert err.retry_after == 1.5
    assert retry_after_seconds(httpx2.Headers({"retry-after": "2"})) == 2.0
    assert retry_after_seconds(httpx2.Headers({})) is None
    dated = retry_after_seconds(httpx2.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert dated == 0.0  # in the past: no wait


def test_connection_errors_are_retryable() -> None:
    request = httpx2.Request("POST", "http://sim/v1/chat/completions")
    assert isinstance(translate(openai.APITimeoutError(request)), errors.RetryableProviderError)
    err = translate(openai.APIConnectionError(request=request))
    assert isinstance(err, errors.RetryableProviderError)
