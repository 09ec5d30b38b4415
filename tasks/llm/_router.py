"""Walk a run's provider chain: the first provider that may be called now gets the call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.errors import PermanentProviderError, ProvidersUnavailable, RetryableProviderError
from tasks.llm._call import Completion, complete
from tasks.llm._guard import estimate_tokens, get_guard
from tasks.llm._routing import Target
from workers.settings import Settings


def call_chain(
    settings: Settings,
    chain: list[Target],
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    on_delta: Callable[[str], None] | None = None,
) -> tuple[Completion, Target]:
    """One chat completion from the first available provider of ``chain``.

    A provider whose breaker is open, that asked us to hold off (Retry-After), or whose rate
    limit is spent is skipped. A failed half-open probe is the provider's problem, not the
    run's, so it moves on too. Raises :class:`RetryableProviderError` for an ordinary
    provider failure (the step retries with backoff), :class:`PermanentProviderError`, or
    :class:`ProvidersUnavailable` with the shortest wait when nobody can be called now.
    """
    providers = {p.name: p for p in settings.provider_list}
    estimate = estimate_tokens(messages, tools)
    skipped: list[tuple[str, str, float]] = []
    for target in chain:
        provider = providers[target.provider]
        guard = get_guard(settings, provider)
        admission = guard.admit(estimate)
        if not admission.ok:
            skipped.append((target.provider, admission.outcome, admission.wait_s))
            continue
        try:
            completion = complete(
                provider, messages, tools, target.model, admission.at, on_delta=on_delta
            )
        except RetryableProviderError as exc:
            guard.failed(admission, exc)
            if admission.probe:
                skipped.append((target.provider, "probe_failed", provider.reset_timeout))
                continue
            raise
        except PermanentProviderError:
            guard.release(admission)
            raise
        except BaseException:
            guard.release(admission)
            raise
        guard.succeeded(admission, completion.prompt_tokens + completion.completion_tokens)
        return completion, target
    detail = ", ".join(f"{name} {why} ({wait:.1f}s)" for name, why, wait in skipped)
    raise ProvidersUnavailable(
        f"no provider can take the call now: {detail}", min(wait for _, _, wait in skipped)
    )
