"""One settings object for the whole fleet, read from ``AGENTFLEET_*`` environment variables.

Every process (API, workers, CLI, demo) builds its configuration from :class:`Settings`, so an
impossible combination of time limits fails at start-up instead of surfacing as a duplicated
run an hour later, and a misspelt variable is named at start-up (:func:`unknown_variables`)
instead of being ignored in silence. The settings come in groups (``settings.redis``,
``settings.limits``, ...: :data:`GROUPS`), but the variables are flat: field ``x`` of any group is
read from ``AGENTFLEET_X``. Every field is listed in docs/configuration.md, one table per group
(``python -m ops.config_reference`` writes those tables from this class).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Self

from pydantic import BaseModel, Field, create_model, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from agentfleet.tasks.setting_groups import (
    ApiSettings,
    BrokerKind,
    CelerySettings,
    FlowerSettings,
    LimitSettings,
    LlmSettings,
    LogSettings,
    RedisSettings,
    RetentionSettings,
    RunSettings,
    SettingsGroup,
    TenantSettings,
    WorkerSettings,
    broker_kind,
)

#: The prefix of every variable :class:`Settings` reads.
ENV_PREFIX: Final = "AGENTFLEET_"


#: ``AGENTFLEET_*`` variables that are ours without being settings: where the Python client
#: and the CLI find the API (agentfleet.client), and docker-compose's published host ports.
OTHER_VARIABLES: Final = frozenset(
    {
        "AGENTFLEET_API_URL",
        "AGENTFLEET_API_KEY",
        "AGENTFLEET_API_PORT",
        "AGENTFLEET_FLOWER_HOST_PORT",
    }
)

_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("agentfleet_environ", default=None)


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source (its parsing, prefix and case rules) over a given
    mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # EnvSettingsSource.__init__ reads os.environ through this method; tests/test_config.py
        # fails if a pydantic-settings release stops calling it.
        return {
            name if self.case_sensitive else name.lower(): value
            for name, value in self._environ.items()
            if value or not self.env_ignore_empty
        }


class Settings(BaseSettings):
    """Fleet configuration, in groups: ``settings.limits.tool_time_limit``. Field ``x`` of any
    group is read from ``AGENTFLEET_X``, and ``Settings(x=...)`` sets it too."""

    # An empty variable counts as unset: deployment files pass optional ones as ${VAR:-}.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, env_ignore_empty=True
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)
    celery: CelerySettings = Field(default_factory=CelerySettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    runs: RunSettings = Field(default_factory=RunSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    tenants: TenantSettings = Field(default_factory=TenantSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    logs: LogSettings = Field(default_factory=LogSettings)
    flower: FlowerSettings = Field(default_factory=FlowerSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The variables are flat (AGENTFLEET_TOOL_TIME_LIMIT, not ..._LIMITS__...): they are
        # read as the fields of _Variables, and _route puts each in its group.
        environ = _ENVIRON.get()
        if environ is None:
            return (init_settings, EnvSettingsSource(_Variables))
        return (init_settings, _MappingSource(_Variables, environ))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Self:
        """The settings of a process started with ``environ``: read from it alone, never
        from this process's own environment."""
        token = _ENVIRON.set(environ)
        try:
            return cls()
        finally:
            _ENVIRON.reset(token)

    @model_validator(mode="before")
    @classmethod
    def _route(cls, data: object) -> object:
        # Flat names (variables, Settings(tool_time_limit=...)) go into their groups; a value
        # given for a group as a whole wins over a flat one for the same field.
        if not isinstance(data, Mapping):
            return data
        routed: dict[str, Any] = {}
        flat: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            if key in FIELD_GROUPS:
                flat.setdefault(FIELD_GROUPS[key], {})[key] = value
            else:
                routed[key] = value
        for group, values in flat.items():
            given = routed.get(group)
            if isinstance(given, BaseModel):
                given = given.model_dump(exclude_unset=True)
            routed[group] = {**values, **given} if isinstance(given, Mapping) else values
        return routed

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied, unvalidated as pydantic's; flat names
        (``{"key_prefix": "x"}``) update the field of their group."""
        if not update:
            return super().model_copy(deep=deep)
        routed = {k: v for k, v in update.items() if k not in FIELD_GROUPS}
        for key, value in update.items():
            if key in FIELD_GROUPS:
                group = FIELD_GROUPS[key]
                current = routed.get(group, getattr(self, group))
                routed[group] = current.model_copy(update={key: value})
        return super().model_copy(update=routed, deep=deep)

    @model_validator(mode="after")
    def _check_timeouts(self) -> Self:
        # The ordering that keeps a long LLM step from being delivered twice:
        #   HTTP timeout < soft limit < hard limit, and
        #   longest retry countdown + longest hard limit + margin < visibility timeout,
        # because a countdown message sits unacknowledged in a worker until its ETA and
        # then runs for at most the hard limit (docs/configuration.md, "The timeout arithmetic").
        llm, limits, celery = self.llm, self.limits, self.celery
        if not llm.llm_timeout < limits.step_soft_time_limit < limits.step_time_limit:
            raise ValueError(
                "need llm_timeout < step_soft_time_limit < step_time_limit, got "
                f"{llm.llm_timeout} / {limits.step_soft_time_limit} / {limits.step_time_limit}"
            )
        if not limits.tool_soft_time_limit < limits.tool_time_limit:
            raise ValueError("need tool_soft_time_limit < tool_time_limit")
        longest = max(limits.step_time_limit, limits.tool_time_limit)
        countdown = max(llm.max_retry_countdown, limits.chord_recovery_delay)
        needed = countdown + longest + celery.visibility_margin
        if celery.visibility_timeout < needed:
            raise ValueError(
                f"visibility_timeout={celery.visibility_timeout}s is too short: it must exceed "
                f"the longest countdown + longest hard time limit + {celery.visibility_margin}s "
                f"= {needed:.0f}s, or late-acked tasks are redelivered while still running"
            )
        if self.runs.default_max_steps > self.runs.max_steps_limit:
            raise ValueError("default_max_steps must not exceed max_steps_limit")
        for provider in llm.provider_list:
            if not provider.timeout < limits.step_soft_time_limit:
                raise ValueError(
                    f"provider {provider.name!r}: timeout {provider.timeout}s must be below "
                    f"step_soft_time_limit {limits.step_soft_time_limit}s"
                )
        names = [p.name for p in llm.provider_list]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique, got {names}")
        for alias, targets in llm.model_aliases.items():
            for target in targets:
                provider_name, _, model = target.partition(":")
                if provider_name not in names or not model:
                    raise ValueError(
                        f"model alias {alias!r}: {target!r} is not 'provider:model' with a "
                        f"configured provider ({', '.join(names)})"
                    )
        return self

    @model_validator(mode="after")
    def _check_broker(self) -> Self:
        kind = broker_kind(self.broker)  # an unsupported scheme stops the process here
        limits, celery = self.limits, self.celery
        longest = max(limits.step_time_limit, limits.tool_time_limit) + celery.visibility_margin
        if kind is BrokerKind.RABBITMQ and not longest < celery.broker_consumer_timeout:
            # A step is acknowledged when it ends (late acks); RabbitMQ closes the channel of
            # a delivery held longer than consumer_timeout and hands it out again. Countdowns
            # wait on the broker (native delayed delivery), so only the hard limits count.
            raise ValueError(
                f"broker_consumer_timeout={celery.broker_consumer_timeout}s is too short: "
                f"RabbitMQ's consumer_timeout must exceed the longest hard time limit + "
                f"{celery.visibility_margin}s = {longest:.0f}s"
            )
        return self

    @model_validator(mode="after")
    def _check_sentinel(self) -> Self:
        urls = (self.redis.redis_url, self.broker, self.backend)
        if any(is_sentinel(u) for u in urls) and not self.redis.redis_sentinel_master:
            raise ValueError(
                "sentinel:// URLs need AGENTFLEET_REDIS_SENTINEL_MASTER (the master's name)"
            )
        return self

    @property
    def broker(self) -> str:
        """The Celery broker URL in force: ``celery.broker_url``, else ``redis.redis_url``."""
        return self.celery.broker_url or self.redis.redis_url

    @property
    def backend(self) -> str:
        """The Celery result backend in force: ``celery.result_backend``, else the run store."""
        return self.celery.result_backend or self.redis.redis_url


def _group_model(field: FieldInfo) -> type[SettingsGroup]:
    model = field.annotation
    if not (isinstance(model, type) and issubclass(model, SettingsGroup)):
        raise TypeError(f"every field of Settings is a group, not {model!r}")
    return model


#: The groups of :class:`Settings`, by attribute name.
GROUPS: Final[Mapping[str, type[SettingsGroup]]] = {
    name: _group_model(field) for name, field in Settings.model_fields.items()
}

#: The group of each setting, by field name: field ``x`` is read from ``AGENTFLEET_X``.
FIELD_GROUPS: Final[Mapping[str, str]] = {
    name: group for group, model in GROUPS.items() for name in model.model_fields
}

if len(FIELD_GROUPS) != sum(len(m.model_fields) for m in GROUPS.values()) or set(
    FIELD_GROUPS
) & set(GROUPS):
    # A variable names one field: the same name in two groups (or a group's) is ambiguous.
    raise TypeError("settings field names must be unique across groups and differ from them")


def setting_field(name: str) -> FieldInfo:
    """The field of setting ``name`` (``"tool_time_limit"``) in its group."""
    return GROUPS[FIELD_GROUPS[name]].model_fields[name]


class _VariablesBase(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True)


#: Every setting as a flat field, for pydantic-settings to read (and decode) the variables
#: by; never validated or instantiated: :class:`Settings` validates what it reads.
_VARIABLE_FIELDS: dict[str, Any] = {
    name: (setting_field(name).rebuild_annotation(), None) for name in FIELD_GROUPS
}
_Variables: type[BaseSettings] = create_model(
    "_Variables", __base__=_VariablesBase, **_VARIABLE_FIELDS
)


def is_sentinel(url: str) -> bool:
    """True for Celery's Sentinel URL form, ``sentinel://h1:26379;sentinel://h2:26379/0``."""
    return url.startswith("sentinel://")


@dataclass(frozen=True)
class UnknownVariable:
    """An ``AGENTFLEET_*`` variable no part of agentfleet reads, most likely a typo."""

    name: str
    #: The known variable it resembles most, if any comes close.
    closest: str | None

    def message(self) -> str:
        said = f"{self.name} is not an agentfleet setting and is ignored"
        return f"{said}; did you mean {self.closest}?" if self.closest else said


def known_variables(settings: Settings | None = None) -> frozenset[str]:
    """Every ``AGENTFLEET_*`` variable agentfleet reads; with ``settings``, also the ones its
    providers take their API keys from (``api_key_env``)."""
    fields = {ENV_PREFIX + name.upper() for name in FIELD_GROUPS}
    keys = (
        {p.api_key_env for p in settings.llm.provider_list if p.api_key_env} if settings else set()
    )
    return frozenset(fields | OTHER_VARIABLES | keys)


def unknown_variables(
    environ: Mapping[str, str], settings: Settings | None = None
) -> list[UnknownVariable]:
    """The variables of ``environ`` that look like settings (the prefix, in any case, as the
    settings read them) but are none, each with the closest known name."""
    known = known_variables(settings)
    unknown = []
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            # Compared without the prefix, which every candidate shares.
            close = difflib.get_close_matches(
                upper.removeprefix(ENV_PREFIX), [k.removeprefix(ENV_PREFIX) for k in known], n=1
            )
            unknown.append(UnknownVariable(name, ENV_PREFIX + close[0] if close else None))
    return unknown


def warn_unknown_variables(logger: logging.Logger, settings: Settings | None = None) -> None:
    """Log a warning for each unknown ``AGENTFLEET_*`` variable of this process."""
    for variable in unknown_variables(os.environ, settings):
        logger.warning("%s", variable.message())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, validated once."""
    return Settings()
