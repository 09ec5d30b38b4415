"""The one exception tree of agentfleet. Retry meaning lives in the type::

    AgentfleetError
    ├── ConfigError                 settings or registration that cannot work
    ├── RunNotFound                 no run record under that ID
    ├── RunCancelled                the run was cancelled while a step was working on it
    ├── RunFailed                   how a run that did not succeed ends its Celery task (record)
    ├── RolledBack                  a step found the state it builds on gone (a Redis crash)
    ├── Unauthorized                no API key, or one that is not known (HTTP 401)
    ├── InvalidRequest              work refused: it breaks the schema or a limit (problems)
    ├── Unavailable                 Redis or the broker cannot take work now (HTTP 503)
    ├── InProgress                  another request is creating the same tool call ID (HTTP 409)
    ├── ThreadBusy                  a run for a thread that has one unfinished (policy reject)
    ├── NotWaiting                  a decision for a run or call that does not wait for one
    │                               (HTTP 409)
    ├── BudgetExceeded              a run's or a tenant's token or cost budget is spent
    │                               (resets_at: when a tenant's daily budget resets)
    ├── Answered                    a request with the same Idempotency-Key was accepted first
    ├── ProviderError               an LLM provider call failed (provider, message)
    │   ├── RetryableProviderError  try again later (retry_after seconds, if the provider said)
    │   │   └── RateLimitedError    429: slow down (not a breaker failure)
    │   └── PermanentProviderError  the same request will fail again (status)
    │       └── ProviderAccountError  refused at this provider (auth, permission, quota,
    │                                 model not found): another provider may serve it
    ├── ProvidersUnavailable        every provider of the chain is open, held or rate-limited
    └── ToolError                   a tool call could not produce an output
        ├── UnknownToolError        no tool of that name (or not allowed for the run)
        ├── ToolArgumentsError      arguments are not JSON or do not match the schema
        ├── ToolExecutionError      the tool itself raised or timed out
        └── ToolRedeliveryLimit     the call lost its worker on each of its deliveries

Third-party exceptions are translated into these at exactly one boundary each
(``agentfleet.tasks.llm`` for the openai SDK, ``agentfleet.tasks.tools`` for tool functions). Every
class takes only positional arguments and passes all of them to ``Exception.__init__``, so it
survives the JSON result backend, which rebuilds exceptions as ``cls(*args)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class AgentfleetError(Exception):
    """Root of every error agentfleet raises."""

    #: Short machine-readable code, used in run records and API error bodies.
    code = "agentfleet_error"

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class ConfigError(AgentfleetError):
    code = "config_error"


class UnknownAgentError(ConfigError):
    """No agent of that name is declared in this process."""

    code = "unknown_agent"


class OutputInvalid(AgentfleetError):
    """A final answer that is not JSON of the run's output schema: sent back to the model to
    repair, and the run's failure once its repairs are spent."""

    code = "output_invalid"


class RunNotFound(AgentfleetError):
    code = "run_not_found"


class RunCancelled(AgentfleetError):
    code = "cancelled"


class RunFailed(AgentfleetError):
    """A run ended without succeeding: failed, or cancelled. ``args == (message, record)``.

    The task that records a run's end raises it, so the run ID's Celery state is ``FAILURE``
    and its ``task-failed`` event reaches Flower. ``record`` is the final run record as
    ``GET /v1/runs/{id}`` shows it: ``AsyncResult(run_id).get()`` raises this exception
    (rebuilt by name where this module is not importable, with the same ``args``), and
    ``get(propagate=False)`` returns it.
    """

    code = "run_failed"

    def __init__(self, message: str, record: dict[str, Any] | None = None) -> None:
        super().__init__(message, record or {})

    @classmethod
    def of(cls, record: dict[str, Any]) -> RunFailed:
        """The exception that ends the task of a run whose final record is ``record``."""
        error = record.get("error") or {}
        code = error.get("code") or record.get("status")
        message = f"run {record.get('id')} {record.get('status')}: {code}"
        if error.get("message"):
            message += f": {error['message']}"
        return cls(message, record)

    @property
    def record(self) -> dict[str, Any]:
        return dict(self.args[1])

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        # What Flower and the task-failed event show: not the record, which holds the answer.
        return f"{type(self).__name__}({self.message!r})"


class RolledBack(AgentfleetError):
    """A transition of a step found that the answer it builds on is gone: a crash of Redis
    rolled it back. Nothing was written, and the run is due at once for the watchdog."""

    code = "rolled_back"


class Unauthorized(AgentfleetError):
    code = "unauthorized"


class InvalidRequest(AgentfleetError):
    """Work refused before anything of it was written. ``args == (message, problems)``;
    ``problems`` holds a ``[field, message]`` pair for each thing wrong with it."""

    code = "invalid_request"

    def __init__(self, message: str, problems: Sequence[Sequence[str]] = ()) -> None:
        super().__init__(message, [list(p) for p in problems])

    @classmethod
    def of(cls, problems: Sequence[tuple[str, str]]) -> InvalidRequest:
        """The refusal naming ``problems``; its message lists them as ``field: message``."""
        return cls("; ".join(f"{f}: {m}" for f, m in problems), problems)

    @property
    def problems(self) -> list[tuple[str, str]]:
        return [(str(f), str(m)) for f, m in self.args[1]]


class Unavailable(AgentfleetError):
    """Redis or the broker cannot take the work right now; nothing was accepted."""

    code = "unavailable"


class InProgress(AgentfleetError):
    """Another request is creating the same tool call ID right now; retry."""

    code = "in_progress"


class ThreadBusy(AgentfleetError):
    """A run with thread_policy ``reject`` while its thread has an unfinished run: refused,
    nothing kept (a 409)."""

    code = "thread_busy"


class NotWaiting(AgentfleetError):
    """A decision or an answer that nothing waits for: the run is not waiting, the call is
    not pending (or not of that kind), or it was decided already. Nothing was recorded."""

    code = "not_waiting"


class BudgetExceeded(AgentfleetError):
    """A budget refuses the next LLM call (a run's end) or new runs (HTTP 429).
    ``args == (message, resets_at)``: the Unix time a tenant's daily budget resets, or
    None for a run's own budget, which never does."""

    code = "budget_exceeded"

    def __init__(self, message: str, resets_at: float | None = None) -> None:
        super().__init__(message, resets_at)

    @property
    def resets_at(self) -> float | None:
        value = self.args[1]
        return float(value) if isinstance(value, int | float) else None


class Answered(AgentfleetError):
    """A request with the same Idempotency-Key was accepted first.
    ``args == (its kept answer,)``."""

    code = "answered"


class ProviderError(AgentfleetError):
    """An LLM provider call failed. ``args == (message, provider)``."""

    code = "provider_error"

    def __init__(self, message: str, provider: str = "default", *rest: object) -> None:
        super().__init__(message, provider, *rest)

    @property
    def provider(self) -> str:
        return str(self.args[1])


class RetryableProviderError(ProviderError):
    """Worth retrying. ``args == (message, provider, retry_after_seconds_or_None)``."""

    code = "provider_unavailable"

    def __init__(
        self, message: str, provider: str = "default", retry_after: float | None = None
    ) -> None:
        super().__init__(message, provider, retry_after)

    @property
    def retry_after(self) -> float | None:
        value = self.args[2]
        return float(value) if isinstance(value, int | float) else None


class RateLimitedError(RetryableProviderError):
    """The provider answered 429: it is up, and asks us to slow down."""

    code = "provider_rate_limited"


class ProvidersUnavailable(AgentfleetError):
    """No provider of a chain may be called now. ``args == (message, wait_seconds)``."""

    code = "providers_unavailable"

    def __init__(self, message: str, wait_s: float = 1.0) -> None:
        super().__init__(message, wait_s)

    @property
    def wait_s(self) -> float:
        return float(self.args[1])


class PermanentProviderError(ProviderError):
    """Retrying cannot help. ``args == (message, provider, http_status_or_None)``."""

    code = "provider_rejected"

    def __init__(self, message: str, provider: str = "default", status: int | None = None) -> None:
        super().__init__(message, provider, status)

    @property
    def status(self) -> int | None:
        value = self.args[2]
        return int(value) if isinstance(value, int) else None


class ProviderAccountError(PermanentProviderError):
    """The provider refused the account or does not serve the model: 401, 402, 403, 404, or a
    429 ``insufficient_quota``. Retrying there cannot help; the next provider of the chain
    may serve the same request. ``args`` as :class:`PermanentProviderError`."""

    code = "provider_account_error"


class ToolError(AgentfleetError):
    code = "tool_error"


class UnknownToolError(ToolError):
    code = "unknown_tool"


class ToolArgumentsError(ToolError):
    code = "invalid_tool_arguments"


class ToolExecutionError(ToolError):
    code = "tool_failed"


class ToolRedeliveryLimit(ToolError):
    """Begun ``max_redeliveries`` times, and its worker was lost each time: not run again."""

    code = "tool_redelivery_limit"
