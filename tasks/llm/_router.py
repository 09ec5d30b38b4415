"""Walk a run's provider chain: the first provider that serves the call answers it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentfleet.tasks import tracing
from agentfleet.tasks.errors import (
    PermanentProviderError,
    ProviderAccountError,
    ProviderError,
    ProvidersUnavailable,
    RetryableProviderError,
)
from agentfleet.tasks.llm._call import CallOptions, Completion, complete
from agentfleet.tasks.llm._guard import Admission, ProviderGuard, estimate_tokens, get_guard
from agentfleet.tasks.llm._routing import Target
from agentfleet.tasks.setting_groups import ProviderConfig
from agentfleet.tasks.settings import Settings


@dataclass
class _Walk:
    """What the providers of a chain said, in one pass over it."""

    #: Providers not called: (name, why, seconds until they may be).
    skipped: list[tuple[str, str, float]] = field(default_factory=list)
    #: Retryable failures of calls that were not half-open probes.
    retryable: list[RetryableProviderError] = field(default_factory=list)
    #: Account failures (401, 402, 403, 404, insufficient quota).
    refused: list[ProviderAccountError] = field(default_factory=list)
    #: Providers called so far.
    called: int = 0

    def outcome(self) -> ProviderError | ProvidersUnavailable:
        """The error that ends a pass in which no provider served the call."""
        if self.retryable:
            return _retry(self.retryable)
        if self.skipped:
            # A provider may serve later: wait for it (a refusal alone does not end the run).
            detail = ", ".join(f"{n} {why} ({wait:.1f}s)" for n, why, wait in self.skipped)
            refusals = "".join(f"; {e.message}" for e in self.refused)
            return ProvidersUnavailable(
                f"no provider can take the call now: {detail}{refusals}",
                min(wait for _, _, wait in self.skipped),
            )
        first = self.refused[0]
        message = "; ".join(e.message for e in self.refused)
        return ProviderAccountError(message, first.provider, first.status)


def _retry(errors: list[RetryableProviderError]) -> RetryableProviderError:
    """One retryable error for a pass: the step waits until the first provider may answer."""
    if len(errors) == 1:
        return errors[0]
    asked = [e.retry_after or 0.0 for e in errors]
    return RetryableProviderError(
        "; ".join(e.message for e in errors), errors[-1].provider, min(asked) or None
    )


def call_chain(
    settings: Settings,
    chain: list[Target],
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    on_delta: Callable[[str], None] | None = None,
    deadline: float | None = None,
    options: CallOptions | None = None,
) -> tuple[Completion, Target]:
    """One chat completion from the first provider of ``chain`` that serves it.

    Each provider is asked at most once, in order. One whose breaker is open, that asked us
    to hold off (Retry-After), or whose rate limit is spent is skipped. One that fails for
    itself or for our account there (5xx, timeout, connection error, 408/409/429; 401, 402,
    403, 404, insufficient quota) has the failure counted and the call moves on at once. Once
    a provider was called, the next is asked only if its timeout fits before ``deadline``
    (``time.monotonic()``), the time the step must end by. A request error (400, 422, other
    4xx, a malformed answer) is raised at once: no provider would take that request.

    When no provider served, raises :class:`RetryableProviderError` if one failed with a
    retryable error (the step retries with backoff), else :class:`ProvidersUnavailable` with
    the shortest wait if one was skipped, else :class:`ProviderAccountError`.
    """
    providers = {p.name: p for p in settings.llm.provider_list}
    estimate = estimate_tokens(messages, tools)
    walk = _Walk()
    for target in chain:
        provider = providers[target.provider]
        if walk.called and not _fits(provider, deadline):
            walk.skipped.append((target.provider, "out_of_step_time", 0.0))
            continue
        guard = get_guard(settings, provider)
        admission = guard.admit(estimate)
        if not admission.ok:
            walk.skipped.append((target.provider, admission.outcome, admission.wait_s))
            continue
        completion = _call(
            guard, admission, target, walk, messages, tools, on_delta, options, settings
        )
        if completion is not None:
            return completion, target
    raise walk.outcome()


def _fits(provider: ProviderConfig, deadline: float | None) -> bool:
    if deadline is None:
        return True
    return time.monotonic() + provider.timeout + provider.connect_timeout <= deadline


def _call(
    guard: ProviderGuard,
    admission: Admission,
    target: Target,
    walk: _Walk,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    on_delta: Callable[[str], None] | None,
    options: CallOptions | None,
    settings: Settings,
) -> Completion | None:
    """The provider's answer, or None when it failed for itself (noted in ``walk``)."""
    provider = guard.provider
    walk.called += 1
    model_settings = options.settings if options else None
    try:
        with tracing.llm_call(
            provider.name, target.model, provider.base_url, model_settings
        ) as span:
            completion = complete(
                provider,
                messages,
                tools,
                target.model,
                admission.at,
                on_delta,
                options,
                settings.llm.llm_transport,
            )
            span.answered(completion)
    except RetryableProviderError as exc:
        guard.failed(admission, exc)
        if admission.probe:
            # A failed probe reopened the breaker: the provider's problem, not the run's.
            walk.skipped.append((target.provider, "probe_failed", provider.reset_timeout))
        else:
            walk.retryable.append(exc)
        return None
    except ProviderAccountError as exc:
        guard.failed(admission, exc)
        walk.refused.append(exc)
        return None
    except PermanentProviderError:
        guard.release(admission)
        raise
    except BaseException:
        guard.release(admission)
        raise
    guard.succeeded(admission, completion.prompt_tokens + completion.completion_tokens)
    return completion
