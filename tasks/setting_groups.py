"""The groups of the fleet's settings, each one attribute of ``Settings`` (``settings.redis``,
``settings.limits``, ...), and the records they hold: providers, prices, tenants' budgets.

agentfleet.tasks.settings assembles the groups into ``Settings`` and reads the variables into
them; field ``x`` of any group comes from ``AGENTFLEET_X``. A group refuses a field it does not
have, and is frozen.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

#: Where the built-in LLM simulator listens by default (``python -m agentfleet.simulator``).
DEFAULT_SIMULATOR_URL = "http://127.0.0.1:8799/v1"

#: How a worker's LLM calls reach the provider (``llm_transport``).
LlmTransport = Literal["aiohttp", "httpx"]
#: Chosen by measurement: docs/performance.md, "The LLM client".
DEFAULT_LLM_TRANSPORT: Final[LlmTransport] = "aiohttp"

#: The providers file as last parsed: (path, its modification time and size, the providers).
_providers_read: tuple[Path, tuple[int, int], tuple[ProviderConfig, ...]] | None = None


def _providers_in(path: Path) -> tuple[ProviderConfig, ...]:
    """The providers ``path`` lists: parsed once, and again only when the file changes (every
    LLM call reads the list; a stat is all it costs)."""
    global _providers_read
    stat = path.stat()
    version = (stat.st_mtime_ns, stat.st_size)
    if _providers_read is None or _providers_read[:2] != (path, version):
        raw = json.loads(path.read_text())
        _providers_read = (path, version, tuple(ProviderConfig.model_validate(p) for p in raw))
    return _providers_read[2]


#: Characters the run explorer's signing key needs at least (placeholders are shorter).
UI_SECRET_MIN_CHARS: Final = 32
#: JSON keys whose values run views never show (agentfleet.tasks.redaction).
DEFAULT_REDACT_FIELDS: Final = (
    "api_key",
    "authorization",
    "password",
    "secret",
    "token",
    "access_token",
    "private_key",
)
#: Text run views never show: bearer tokens, sk-... keys, AWS access key IDs, private keys.
DEFAULT_REDACT_PATTERNS: Final = (
    r"(?i)bearer\s+[a-z0-9._~+/=-]{8,}",
    r"\bsk-[A-Za-z0-9_-]{16,}",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
)


class BrokerKind(enum.StrEnum):
    """Which broker a URL names: the options that differ live in ``agentfleet.workers.broker``."""

    REDIS = "redis"
    RABBITMQ = "rabbitmq"


_SCHEMES = {
    "redis": BrokerKind.REDIS,
    "rediss": BrokerKind.REDIS,
    "sentinel": BrokerKind.REDIS,
    "amqp": BrokerKind.RABBITMQ,
    "amqps": BrokerKind.RABBITMQ,
    "pyamqp": BrokerKind.RABBITMQ,
}


def broker_kind(url: str) -> BrokerKind:
    """Which broker ``url`` names; ValueError for a scheme the fleet is not configured for."""
    # A failover list ("amqp://a;amqp://b") names one kind of broker: the first decides.
    scheme = urlsplit(url.split(";", 1)[0].strip()).scheme.lower()
    try:
        return _SCHEMES[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise ValueError(f"unsupported broker URL scheme {scheme!r}: use one of {known}") from None


class ModelPrice(BaseModel):
    """What one model costs, in US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0, le=10_000, description="Per million prompt tokens.")
    output: float = Field(ge=0, le=10_000, description="Per million completion tokens.")
    cached_input: float | None = Field(
        default=None,
        ge=0,
        le=10_000,
        description="Per million prompt tokens the provider served from its cache; "
        "unset = the input price.",
    )

    def cost(self, prompt: int, completion: int, cached: int = 0) -> float:
        """The price of a call that used these tokens (``cached`` are part of ``prompt``)."""
        cached = min(max(cached, 0), prompt)
        cached_price = self.input if self.cached_input is None else self.cached_input
        dollars = (prompt - cached) * self.input + cached * cached_price
        return (dollars + completion * self.output) / 1_000_000


class TenantBudget(BaseModel):
    """What one tenant may spend per day (UTC) on LLM calls; unset = no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens_per_day: int | None = Field(default=None, ge=1, le=10**12)
    cost_per_day: float | None = Field(default=None, gt=0, le=10**7, description="US dollars.")


class ProviderConfig(BaseModel):
    """One OpenAI-compatible LLM endpoint, with its own breaker and rate limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    base_url: str
    api_key_env: str | None = Field(default=None, description="Variable holding the key.")
    api_key_file: Path | None = Field(default=None, description="File holding the key.")
    models: tuple[str, ...] = Field(default=(), description="Models served; empty = any.")
    default_model: str | None = None
    priority: int = Field(default=100, description="Lower goes first in the default chain.")
    timeout: float = Field(default=60.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    rpm: int | None = Field(default=None, gt=0, description="Requests per minute, fleet-wide.")
    tpm: int | None = Field(default=None, gt=0, description="Tokens per minute, fleet-wide.")
    burst_seconds: float = Field(
        default=1.0, gt=0, description="How many seconds of the rate may be spent at once."
    )
    fail_max: int = Field(default=5, ge=1, description="Consecutive failures that open it.")
    reset_timeout: float = Field(default=30.0, gt=0, description="Open seconds before a probe.")
    max_probes: int = Field(default=1, ge=1, description="Half-open trial calls, fleet-wide.")
    structured_outputs: bool = Field(
        default=True,
        description="Takes response_format with a JSON schema; false: a run's output schema "
        "goes to it as an instruction.",
    )
    reasoning_effort: bool = Field(
        default=True, description="Takes reasoning_effort; false: the setting is not sent."
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Model -> price per million tokens; a call to a model with no price costs 0.",
    )

    def api_key(self) -> str:
        """The key from the file or variable; a placeholder for keyless local servers."""
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip()
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ValueError(f"provider {self.name!r}: ${self.api_key_env} is not set")
            return value
        return "none"

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models

    def price(self, model: str) -> ModelPrice | None:
        """The price of ``model`` at this provider; None when none is configured."""
        return self.prices.get(model)


def _split_commas(value: object) -> object:
    """``"a, b,"`` -> ``["a", "b"]``; a list passes through."""
    if isinstance(value, str):
        return [m.strip() for m in value.split(",") if m.strip()]
    return value


#: A list given as comma-separated text (``AGENTFLEET_TOOL_MODULES=a,b``), not as JSON.
_CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
_CommaPaths = Annotated[list[Path], NoDecode, BeforeValidator(_split_commas)]


class SettingsGroup(BaseModel):
    """A group of settings, one attribute of :class:`Settings`; its field ``x`` is read from
    ``AGENTFLEET_X`` (the variable names no group). A field it does not have is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisSettings(SettingsGroup):
    """The run store's Redis: where it is, how processes connect, the prefix of its keys."""

    model_config = ConfigDict(title="Redis")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="The run store; also the broker and result backend unless set apart.",
    )
    key_prefix: str = Field(
        default="af", description="Prefix of every Redis key agentfleet writes."
    )
    redis_max_connections: int = Field(
        default=2000, ge=10, description="Connections of each Redis pool of a process, at most."
    )
    redis_sentinel_master: str | None = Field(
        default=None, description="Sentinel master name; needed when a URL is sentinel://."
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None,
        description="Password of the Sentinel servers (Redis's own is in the URL).",
    )
    redis_outage_wait: float = Field(
        default=30.0,
        ge=0,
        description="Seconds a worker keeps retrying an unreachable Redis before failing the "
        "task it is running; the API does not wait (503).",
    )


class CelerySettings(SettingsGroup):
    """Celery's broker and result backend, and how long a message may stay unacknowledged."""

    model_config = ConfigDict(title="Celery broker and result backend")

    broker_url: str | None = Field(
        default=None,
        description="Celery broker: redis://, rediss://, sentinel://, amqp://, amqps:// or "
        "pyamqp://; unset = redis_url.",
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend; unset = redis_url."
    )
    result_expires: int = Field(
        default=7 * 24 * 3600, gt=0, description="Seconds Celery results are kept."
    )
    visibility_timeout: int = Field(
        default=3600,
        gt=0,
        description="Seconds before Redis hands an unacknowledged message to another worker; "
        "the same on every process of a broker.",
    )
    visibility_margin: float = Field(
        default=60.0,
        ge=0,
        description="Slack between the longest a message may stay unacked and the timeout.",
    )
    broker_consumer_timeout: float = Field(
        default=1800.0,
        gt=0,
        description="RabbitMQ's consumer_timeout (s) as configured on the broker: how long it "
        "lets a delivery stay unacknowledged. Checked against the hard time limits.",
    )
    unacked_restore_interval: int = Field(
        default=10,
        ge=1,
        description="Seconds between a worker's checks for messages past the visibility timeout "
        "(kombu's Redis transport option).",
    )
    unacked_restore_throttle: int = Field(
        default=10,
        ge=1,
        description="Only every Nth check scans Redis: a sweep every interval x throttle seconds.",
    )


class LlmSettings(SettingsGroup):
    """The LLM providers: one from ``llm_base_url`` or a list, model aliases, retries and waits."""

    model_config = ConfigDict(title="LLM providers")

    llm_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint; unset (and no providers) = the simulator.",
    )
    llm_api_key: SecretStr | None = Field(default=None, description="API key of llm_base_url.")
    llm_model: str = Field(default="sim-1", description="Model of a run that names none.")
    llm_prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Prices of the provider made from llm_base_url (providers carry their own).",
    )
    llm_timeout: float = Field(default=60.0, gt=0, description="Per-request read timeout (s).")
    llm_connect_timeout: float = Field(
        default=5.0, gt=0, description="Per-request connect timeout (s)."
    )
    llm_transport: LlmTransport = Field(
        default=DEFAULT_LLM_TRANSPORT,
        description="How a worker makes LLM calls: aiohttp = the openai SDK's aiohttp client on "
        "one event loop per process, which the pool's threads hand their calls to; httpx = the "
        "SDK's blocking client in each thread. gevent and eventlet pools always use httpx.",
    )
    simulator_url: str = Field(
        default=DEFAULT_SIMULATOR_URL, description="Where the LLM simulator listens."
    )
    llm_max_retries: int = Field(
        default=5,
        ge=0,
        description="Retries of a step whose pass over its provider chain ended in retryable "
        "errors (one per pass).",
    )
    providers: list[ProviderConfig] = Field(
        default_factory=list,
        description="JSON list of providers; empty = one provider from llm_base_url/llm_api_key.",
    )
    providers_file: Path | None = Field(
        default=None, description="JSON file of providers, read again when it changes."
    )
    model_aliases: dict[str, list[str]] = Field(
        default_factory=dict,
        description='JSON {"alias": ["provider:model", ...]}: a fallback chain by name.',
    )
    max_provider_wait: float = Field(
        default=900.0, gt=0, description="Seconds a run may wait for any provider to be usable."
    )
    retry_backoff_base: float = Field(
        default=1.0, gt=0, description="Base (s) of a step's exponential retry backoff."
    )
    max_retry_countdown: float = Field(
        default=300.0, gt=0, description="Longest wait (s) before a step is tried again."
    )

    @property
    def provider_list(self) -> list[ProviderConfig]:
        """The configured providers, or one built from the single-provider settings."""
        if self.providers:
            return list(self.providers)
        if self.providers_file is not None:
            return list(_providers_in(self.providers_file))
        return list(self._default_provider)

    @cached_property
    def _default_provider(self) -> tuple[ProviderConfig, ...]:
        return (
            ProviderConfig(
                name="default",
                base_url=self.llm_endpoint,
                api_key_env="AGENTFLEET_LLM_API_KEY" if self.llm_api_key else None,
                default_model=self.llm_model,
                prices=self.llm_prices,
                timeout=self.llm_timeout,
                connect_timeout=self.llm_connect_timeout,
            ),
        )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        # A copy shares the cached default provider, which the update may have made stale.
        copied.__dict__.pop("_default_provider", None)
        return copied

    @property
    def uses_simulator(self) -> bool:
        """True when no provider is configured, so LLM calls go to the simulator."""
        return not (self.providers or self.providers_file or self.llm_base_url)

    @property
    def llm_endpoint(self) -> str:
        """The provider URL in force: the configured one, else the simulator."""
        if self.llm_base_url:
            return self.llm_base_url
        return self.simulator_url

    @property
    def llm_key(self) -> str:
        # The SDK refuses to build a client without a key; the simulator ignores it.
        return self.llm_api_key.get_secret_value() if self.llm_api_key else "simulator"


class LimitSettings(SettingsGroup):
    """Time limits of steps and tool calls (seconds), and how lost or stalled work is recovered."""

    model_config = ConfigDict(title="Time limits and recovery")

    step_soft_time_limit: float = Field(
        default=90.0, gt=0, description="Soft limit of an LLM step."
    )
    step_time_limit: float = Field(default=120.0, gt=0, description="Hard limit of an LLM step.")
    tool_soft_time_limit: float = Field(
        default=50.0, gt=0, description="Soft limit of a tool call; @tool(timeout=) overrides it."
    )
    tool_time_limit: float = Field(default=60.0, gt=0, description="Hard limit of a tool call.")
    chord_recovery_delay: float = Field(
        default=30.0,
        gt=0,
        description="Wait before re-checking a tool chord whose worker died while finishing it; "
        "longer than Celery's chord dispatch claim (about 21 s with our publish retries).",
    )
    max_redeliveries: int = Field(
        default=5,
        ge=1,
        description="Deliveries of one step or tool call that lose their worker before it fails "
        "(redelivery_limit, tool_redelivery_limit).",
    )
    stall_timeout: float = Field(
        default=300.0,
        gt=0,
        description="Seconds a run may go without progress beyond what its current stage may "
        "take before the watchdog sends its next message again.",
    )
    watchdog_interval: float = Field(
        default=15.0, gt=0, description="Seconds between the watchdog's sweeps (fleet-wide)."
    )


class RunSettings(SettingsGroup):
    """Limits on what callers may ask of a run, and the defaults of what they leave out."""

    model_config = ConfigDict(title="What a run may ask for")

    default_max_steps: int = Field(
        default=10, ge=1, description="max_steps of a run that names none."
    )
    max_steps_limit: int = Field(default=50, ge=1, description="The largest max_steps.")
    max_input_chars: int = Field(
        default=100_000, ge=1, description="Characters of input and system prompt together."
    )
    max_tools_per_run: int = Field(default=32, ge=1, description="Tools one run may name.")
    children_max_depth: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Levels of sub-agent runs below a run started by a caller; a call past it "
        "gives the model an error.",
    )
    children_max_per_step: int = Field(
        default=8, ge=1, le=100, description="Sub-agent runs one step of a run may start."
    )
    children_max_per_tree: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Sub-agent runs a run started by a caller may have below it in all.",
    )
    max_metadata_bytes: int = Field(
        default=4096, ge=2, description="Size of a run's metadata as JSON."
    )
    context_summary_model: str | None = Field(
        default=None,
        max_length=200,
        description="The (cheap) model, provider:model or alias that summarizes what a run "
        "with context_summary leaves out of its context budget; unset = the run's own.",
    )
    default_context_budget: int = Field(
        default=0,
        ge=0,
        description="Tokens a run's transcript may take in each LLM call when neither the "
        "run nor its agent says (0: no budget; the provider's window is the limit).",
    )
    max_output_schema_bytes: int = Field(
        default=16 * 1024, ge=64, description="Size of a run's output_schema as JSON."
    )
    max_output_repairs: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Times an answer that does not match the output schema is sent back to "
        "the model before the run fails with output_invalid (an agent may set its own).",
    )
    stream_flush_interval: float = Field(
        default=0.1, gt=0, description="Seconds between writes of streamed token deltas."
    )


class RetentionSettings(SettingsGroup):
    """How long runs, their events and threads are kept in Redis."""

    model_config = ConfigDict(title="Retention")

    run_ttl: int = Field(
        default=7 * 24 * 3600,
        gt=0,
        description="Seconds a run's record, transcript and events are kept.",
    )
    events_max_len: int = Field(
        default=10_000, ge=100, description="Events kept per run (oldest trimmed first)."
    )
    thread_ttl: int = Field(
        default=30 * 24 * 3600,
        gt=0,
        description="Seconds a thread's history is kept after its last run.",
    )
    thread_max_turns: int = Field(
        default=50,
        ge=1,
        le=10_000,
        description="Turns (runs) a thread's history keeps; the oldest go first, whole.",
    )


class TenantSettings(SettingsGroup):
    """Per-tenant caps, daily budgets and transcript keeping."""

    model_config = ConfigDict(title="Tenants")

    tenant_max_in_flight: int = Field(
        default=0, ge=0, description="Runs of one tenant running at once; 0 = no cap."
    )
    tenant_limits: dict[str, int] = Field(
        default_factory=dict, description="Per-tenant caps overriding tenant_max_in_flight."
    )
    tenant_budgets: dict[str, TenantBudget] = Field(
        default_factory=dict,
        description='Per-tenant daily budgets (UTC days): {"tenant": {"tokens_per_day": N, '
        '"cost_per_day": USD}}; "*" applies to tenants not named.',
    )
    tenant_no_transcript: _CommaList = Field(
        default_factory=list,
        description="Comma-separated tenants whose transcripts do not outlive their runs in "
        "Redis ('*': every tenant): a run's messages, summary and tool arguments and results "
        "are deleted when it ends, its result kept; its steps show no messages; no LLM or tool "
        "cache, thread or stream (docs/api.md, 'Tenants that keep no transcripts').",
    )
    budget_completion_estimate: int = Field(
        default=512,
        ge=1,
        description="Completion tokens a budgeted LLM call reserves when its max_tokens is "
        "unset (the actual usage is settled after the call).",
    )

    def tenant_cap(self, tenant: str) -> int:
        """Runs ``tenant`` may have running at once; 0 = no cap."""
        return self.tenant_limits.get(tenant, self.tenant_max_in_flight)

    def keeps_transcripts(self, tenant: str) -> bool:
        """Whether ``tenant``'s transcripts stay in Redis after their runs end (until
        ``retention.run_ttl``); see ``tenant_no_transcript``."""
        return not ({tenant, "*"} & set(self.tenant_no_transcript))

    def tenant_budget(self, tenant: str) -> TenantBudget | None:
        """``tenant``'s daily budget (its own, else ``"*"``); None when it has none."""
        budget = self.tenant_budgets.get(tenant) or self.tenant_budgets.get("*")
        if budget is None or (budget.tokens_per_day is None and budget.cost_per_day is None):
            return None
        return budget


class ApiSettings(SettingsGroup):
    """The HTTP API: its keys and Redis timeouts, idempotency, batches, callbacks, redaction,
    the run explorer."""

    model_config = ConfigDict(title="API, callbacks and run explorer")

    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="API keys given hashed: {sha256 hex of the key: tenant}; more live in Redis.",
    )
    api_redis_timeout: float = Field(
        default=1.0,
        gt=0,
        description="Seconds the API waits for a Redis reply (run store or publish) before "
        "answering 503.",
    )
    pending_ttl: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a POST's records wait, written but not accepted, for the API's "
        "last write; workers hold its messages that long, then drop them.",
    )
    idempotency_ttl: int = Field(
        default=24 * 3600, gt=0, description="Seconds an Idempotency-Key keeps its answer."
    )
    max_batch_items: int = Field(default=10_000, ge=1, description="Items per batch, at most.")
    callback_secret: SecretStr | None = Field(
        default=None,
        description="HMAC-SHA256 key signing completion callbacks; unset = a callback_url is "
        "refused (422).",
    )
    callback_max_attempts: int = Field(
        default=8, ge=1, description="Deliveries of a completion callback, at most."
    )
    callback_timeout: float = Field(
        default=10.0, gt=0, description="Seconds one callback delivery may take."
    )
    redact_fields: _CommaList = Field(
        default_factory=lambda: list(DEFAULT_REDACT_FIELDS),
        description="Comma-separated JSON keys whose values the run views show as [redacted] "
        "(compared without case, - and _).",
    )
    redact_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REDACT_PATTERNS),
        description="JSON list of regular expressions whose matches the run views show as "
        "[redacted].",
    )
    ui_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key signing the run explorer's session cookies (/ui), at least 32 "
        "characters, the same on every API replica; unset = /ui is off.",
    )
    ui_session_ttl: int = Field(
        default=8 * 3600, ge=60, description="Seconds a run explorer sign-in lasts."
    )

    @field_validator("ui_secret", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # Compose passes an unset variable on as "".
        return None if value == "" else value

    @field_validator("ui_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # A short key is a placeholder ("change-me") or guessable: sessions could be forged.
        if value is not None and len(value.get_secret_value()) < UI_SECRET_MIN_CHARS:
            raise ValueError(
                f"must be at least {UI_SECRET_MIN_CHARS} characters (make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value

    @field_validator("redact_patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return value


class WorkerSettings(SettingsGroup):
    """What workers load (tools and agents), how often they publish it, how they shut down."""

    model_config = ConfigDict(title="Workers, tools and agents")

    tool_modules: _CommaList = Field(
        default_factory=list, description="Comma-separated modules whose @tool functions load."
    )
    agent_modules: _CommaList = Field(
        default_factory=list,
        description="Comma-separated modules whose Agent(...) declarations load.",
    )
    agent_files: _CommaPaths = Field(
        default_factory=list, description="Comma-separated YAML or JSON files of declared agents."
    )
    node_publish_interval: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between a worker's publishes of the tools it has registered; "
        "a record not refreshed for three intervals expires.",
    )
    worker_soft_shutdown_timeout: float = Field(
        default=45.0,
        ge=0,
        description="Seconds running tasks get after a (remapped) SIGTERM before they are "
        "cancelled and requeued.",
    )


class LogSettings(SettingsGroup):
    """Log level and format of workers and the API."""

    model_config = ConfigDict(title="Logs")

    log_level: str = Field(
        default="INFO", description="Level of workers and the API; unset = a worker's -l."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per line, with run and task IDs."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().upper()
            if value not in logging.getLevelNamesMapping():
                raise ValueError(f"unknown log level {value!r}")
        return value


class FlowerSettings(SettingsGroup):
    """Flower, the Celery monitor (``python -m ops.flower``)."""

    model_config = ConfigDict(title="Flower")

    flower_port: int = Field(
        default=5555, ge=1, le=65535, description="Port of python -m ops.flower."
    )
    flower_address: str = Field(default="127.0.0.1", description="Interface Flower binds.")
    flower_basic_auth: SecretStr | None = Field(
        default=None, description="user:password[,user2:password2]; required off loopback."
    )
    flower_read_only: bool = Field(
        default=False, description="Refuse every control operation (shutdown, revoke, ...)."
    )
    flower_purge_offline_workers: int | None = Field(
        default=600, ge=1, description="Seconds after which Flower forgets an offline worker."
    )


#: The variables :meth:`Settings.from_environ` reads instead of ``os.environ``.
