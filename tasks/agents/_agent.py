"""``Agent``: a run's definition declared once, in Python or in a file, and run by name.

An agent names its instructions, model (or fallback chain), tools, output type, model settings
and step limit. A run request that names it (``{"agent": "triage", "input": ...}``) gets all of
these from the definition; the request's own fields may override only those the agent lists in
``allow_overrides``. The API and every worker load the same agent modules
(``AGENTFLEET_AGENT_MODULES``, ``AGENTFLEET_AGENT_FILES``), as for tools; workers publish the
agents they have, and the API refuses a run of an agent no live worker has.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel

from agentfleet.tasks.errors import ConfigError, UnknownAgentError
from agentfleet.tasks.models import AGENT_NAME_PATTERN, ModelSettings
from agentfleet.tasks.output import OutputSpec, schema_problems, strict_schema
from agentfleet.tasks.tools import ToolFunc
from agentfleet.tasks.tools import registry as tool_registry

#: The fields of a run request an agent may let a run override (``allow_overrides``).
OVERRIDABLE = frozenset(
    {
        "system",
        "model",
        "providers",
        "tools",
        "max_steps",
        "model_settings",
        "output_schema",
        "context_budget",
        "cache_ttl",
        "context_summary",
    }
)
#: An output schema larger than this is refused when the agent is declared.
MAX_SCHEMA_BYTES = 64 * 1024


@dataclass(frozen=True)
class RunContext:
    """What a function giving an agent's instructions sees: the run as it is accepted."""

    run_id: str
    tenant: str
    agent: str
    input: str | dict[str, Any]
    metadata: Mapping[str, str]


#: An agent's instructions: text, or a function of the run making it.
Instructions = str | Callable[[RunContext], str]


@dataclass(frozen=True, kw_only=True)
class Agent:
    """An agent definition. Creating one registers it in this process (:data:`registry`);
    two different definitions with one name are a :class:`ConfigError`.

    >>> from pydantic import BaseModel
    >>> class Verdict(BaseModel):
    ...     label: str
    ...     confidence: float
    >>> triage = Agent(name="doc_triage", instructions="Classify the ticket.",
    ...                output_type=Verdict, model_settings={"temperature": 0})
    """

    name: str
    instructions: Instructions = ""
    description: str = ""
    #: A model, ``provider:model``, an alias, or a list of ``provider:model`` tried in order.
    model: str | Sequence[str] | None = None
    #: An explicit provider chain, as a run's ``providers``.
    providers: Sequence[str] | None = None
    #: Tools by name or by their ``@tool`` function; None = every registered tool.
    tools: Sequence[str | ToolFunc] | None = ()
    #: A pydantic model for an object input (a run's ``input`` is then that object).
    input_type: type[BaseModel] | None = None
    #: A pydantic model or a JSON schema the final answer must match.
    output_type: type[BaseModel] | dict[str, Any] | None = None
    model_settings: ModelSettings | Mapping[str, Any] | None = None
    max_steps: int | None = None
    #: Tokens the transcript may take in each LLM call (None: the setting's default).
    context_budget: int | None = None
    #: Replace what the context budget leaves out with a summary (AGENTFLEET_CONTEXT_SUMMARY_MODEL).
    context_summary: bool = False
    #: Seconds an LLM answer to exactly the same call is reused (the response cache); None: none.
    cache_ttl: float | None = None
    #: Repair rounds for an answer that does not match the output type (None: the setting).
    output_repairs: int | None = None
    #: Agents this one's model may call like tools, each call a child run (by name or object).
    subagents: Sequence[Agent | str] = ()
    #: Agents this one may hand the conversation over to (a tool ``transfer_to_<name>`` each).
    handoffs: Sequence[Agent | str] = ()
    #: Run request fields that may override the definition (see :data:`OVERRIDABLE`).
    allow_overrides: AbstractSet[str] = frozenset()
    #: Where the definition came from (a module or a file), shown by ``GET /v1/agents``.
    source: str = field(default="", compare=False)
    register: bool = field(default=True, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(AGENT_NAME_PATTERN, self.name):
            raise ConfigError(f"agent name {self.name!r} must be 1-64 of [A-Za-z0-9_-]")
        where = f"agent {self.name!r}"
        if not isinstance(self.instructions, str) and not callable(self.instructions):
            raise ConfigError(f"{where}: instructions must be text or a function of the run")
        if isinstance(self.model_settings, Mapping):
            try:
                settings = ModelSettings.model_validate(dict(self.model_settings))
            except ValueError as exc:
                raise ConfigError(f"{where}: invalid model_settings: {exc}") from None
            object.__setattr__(self, "model_settings", settings)
        object.__setattr__(self, "allow_overrides", frozenset(self.allow_overrides))
        if unknown := sorted(self.allow_overrides - OVERRIDABLE):
            raise ConfigError(
                f"{where}: allow_overrides names {', '.join(unknown)}; "
                f"overridable: {', '.join(sorted(OVERRIDABLE))}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"{where}: max_steps must be at least 1")
        if self.context_budget is not None and self.context_budget < 256:
            raise ConfigError(f"{where}: context_budget must be at least 256 tokens")
        if self.cache_ttl is not None and not 1 <= self.cache_ttl <= 30 * 86_400:
            raise ConfigError(f"{where}: cache_ttl must be 1 to 2592000 seconds")
        if self.output_repairs is not None and self.output_repairs < 0:
            raise ConfigError(f"{where}: output_repairs must be 0 or more")
        if self.output is not None and (
            problems := schema_problems(self.output.schema, MAX_SCHEMA_BYTES)
        ):
            raise ConfigError(f"{where}: its output schema {problems[0]}")
        self.tool_names  # noqa: B018 - an unknown tool fails at declaration, not at a run
        if self.register:
            registry.add(self)

    @cached_property
    def tool_names(self) -> list[str] | None:
        """The agent's tools by name; None = every registered tool."""
        if self.tools is None:
            return None
        names = []
        for item in self.tools:
            name = item if isinstance(item, str) else tool_registry.name_of(item)
            if name is None or name not in tool_registry:
                # Tool modules load before agent modules (AGENTFLEET_TOOL_MODULES).
                raise ConfigError(f"agent {self.name!r}: {item!r} is not a registered tool")
            names.append(name)
        return list(dict.fromkeys(names))

    @cached_property
    def output(self) -> OutputSpec | None:
        return None if self.output_type is None else OutputSpec.of(self.name, self.output_type)

    @cached_property
    def subagent_names(self) -> list[str]:
        """The agents this one may call, by name."""
        return [a if isinstance(a, str) else a.name for a in self.subagents]

    @cached_property
    def handoff_names(self) -> list[str]:
        """The agents this one may hand over to, by name."""
        return [a if isinstance(a, str) else a.name for a in self.handoffs]

    @cached_property
    def input_schema(self) -> dict[str, Any]:
        if self.input_type is None:
            return {"type": "string", "description": "The user's prompt."}
        schema = self.input_type.model_json_schema()
        return schema

    def instructions_for(self, context: RunContext) -> str:
        if isinstance(self.instructions, str):
            return self.instructions
        text = self.instructions(context)
        if not isinstance(text, str):
            raise ConfigError(f"agent {self.name!r}: its instructions function returned no text")
        return text

    def render_input(self, value: str | dict[str, Any]) -> tuple[str, list[str]]:
        """The user message of ``value``, and what is wrong with it for this agent."""
        if self.input_type is None:
            if not isinstance(value, str):
                return "", ["the agent takes text input, not an object"]
            return value, []
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return "", [f"the agent takes an object of {self.input_type.__name__}"]
        try:
            parsed = self.input_type.model_validate(value)
        except ValueError as exc:
            return "", [str(exc).replace("\n", " ")]
        return parsed.model_dump_json(), []

    def describe(self) -> dict[str, Any]:
        """The definition as data: what ``GET /v1/agents`` shows and the digest covers."""
        settings = self.model_settings
        assert settings is None or isinstance(settings, ModelSettings)
        output = self.output
        return {
            "name": self.name,
            "description": self.description,
            "instructions": self.instructions
            if isinstance(self.instructions, str)
            else f"(made per run by {getattr(self.instructions, '__qualname__', 'a function')})",
            "model": self.model if isinstance(self.model, str | None) else list(self.model),
            "providers": None if self.providers is None else list(self.providers),
            "tools": self.tool_names,
            "input_schema": self.input_schema,
            "output_schema": output.schema if output else None,
            "strict_output": output is not None and strict_schema(output.schema) is not None,
            "model_settings": settings.body() if settings else {},
            "max_steps": self.max_steps,
            "context_budget": self.context_budget,
            "cache_ttl": self.cache_ttl,
            "context_summary": self.context_summary,
            "output_repairs": self.output_repairs,
            "allow_overrides": sorted(self.allow_overrides),
            "subagents": self.subagent_names,
            "handoffs": self.handoff_names,
        }

    @cached_property
    def digest(self) -> str:
        """A short digest of :meth:`describe`: equal digests, the same agent."""
        canonical = json.dumps(self.describe(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class AgentRegistry:
    """Name -> :class:`Agent`. The process-wide one is :data:`registry`."""

    def __init__(self) -> None:
        self._agents: dict[str, Agent] = {}

    def add(self, agent: Agent) -> Agent:
        existing = self._agents.get(agent.name)
        if existing is not None and existing.digest != agent.digest:
            raise ConfigError(f"two different agents are named {agent.name!r}")
        self._agents[agent.name] = agent
        return agent

    def get(self, name: str) -> Agent:
        try:
            return self._agents[name]
        except KeyError:
            raise UnknownAgentError(f"no agent named {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def names(self) -> list[str]:
        return sorted(self._agents)

    def all(self) -> list[Agent]:
        return [self._agents[n] for n in self.names()]

    def remove(self, name: str) -> None:
        self._agents.pop(name, None)


registry = AgentRegistry()
