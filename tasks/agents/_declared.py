"""Agents declared in files (YAML or JSON), for teams that do not write Python.

A file holds a list of agents, or ``{"agents": [...]}``; each entry has the fields of
:class:`~agentfleet.tasks.agents.Agent` that data can say (instructions as text, tools by name,
the output type as a JSON schema in ``output_schema``)::

    agents:
      - name: summarize
        instructions: Summarize the text in one sentence.
        model: sim-1
        tools: []
        output_schema: {type: object, properties: {summary: {type: string}},
                        required: [summary]}
        model_settings: {temperature: 0}
        allow_overrides: [model_settings]
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentfleet.tasks.agents._agent import Agent
from agentfleet.tasks.errors import ConfigError
from agentfleet.tasks.models import AGENT_NAME_PATTERN, ModelSettings


class AgentDeclaration(BaseModel):
    """One agent of a file, checked field by field before it becomes an :class:`Agent`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=AGENT_NAME_PATTERN)
    description: str = ""
    instructions: str = ""
    model: str | list[str] | None = None
    providers: list[str] | None = None
    tools: list[str] | None = Field(default_factory=list)
    output_schema: dict[str, Any] | None = None
    model_settings: ModelSettings | None = None
    max_steps: int | None = Field(default=None, ge=1)
    context_budget: int | None = Field(default=None, ge=256)
    cache_ttl: float | None = Field(default=None, ge=1, le=30 * 86_400)
    context_summary: bool = False
    output_repairs: int | None = Field(default=None, ge=0)
    allow_overrides: list[str] = Field(default_factory=list)
    subagents: list[str] = Field(default_factory=list)
    handoffs: list[str] = Field(default_factory=list)

    def agent(self, source: str) -> Agent:
        return Agent(
            name=self.name,
            description=self.description,
            instructions=self.instructions,
            model=self.model,
            providers=self.providers,
            tools=self.tools,
            output_type=self.output_schema,
            model_settings=self.model_settings,
            max_steps=self.max_steps,
            context_budget=self.context_budget,
            cache_ttl=self.cache_ttl,
            context_summary=self.context_summary,
            output_repairs=self.output_repairs,
            allow_overrides=frozenset(self.allow_overrides),
            subagents=tuple(self.subagents),
            handoffs=tuple(self.handoffs),
            source=source,
        )


def _read(path: Path) -> Any:
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # only files of this kind need it

        return yaml.safe_load(text)
    return json.loads(text)


def load_agent_file(path: Path) -> list[Agent]:
    """Declare (and register) the agents of ``path``; :class:`ConfigError` naming the file, the
    entry and the field for anything wrong."""
    try:
        data = _read(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read agent file {path}: {exc}") from None
    entries = data.get("agents") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ConfigError(f"agent file {path}: expected a list of agents, or {{agents: [...]}}")
    agents = []
    for index, entry in enumerate(entries):
        try:
            declaration = AgentDeclaration.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(entry)'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"agent file {path}, agent {index}: {problems}") from None
        try:
            agents.append(declaration.agent(str(path)))
        except ConfigError as exc:
            raise ConfigError(f"agent file {path}: {exc.message}") from None
    return agents


def load_agents(modules: Iterable[str], files: Iterable[Path]) -> None:
    """Import the agent modules (their ``Agent(...)`` declarations register) and declare the
    agents of the files."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"cannot import agent module {module!r}: {exc}") from exc
    for path in files:
        load_agent_file(path)
