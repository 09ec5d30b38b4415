"""Versioned payloads on the wire and the records kept in Redis."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    StrictBool,
    field_validator,
)

from agentfleet.tasks.errors import ToolArgumentsError
from agentfleet.tasks.llm._routing import RoutingError, resolve_chain
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.states import RunStatus as RunStatus  # re-exported: also imported from here
from agentfleet.tasks.tools import registry

#: Tenant names: short, and safe inside Redis keys.
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: The tenant of runs sent without one (``send_task`` callers that do not name theirs).
DEFAULT_TENANT = "default"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("input is blank: it needs a character other than whitespace")
    return value


#: A prompt: at least one character that is not whitespace. The schema's pattern says so to
#: clients; the validator says it in words.
Prompt = Annotated[
    str, Field(min_length=1, json_schema_extra={"pattern": r"\S"}), AfterValidator(_not_blank)
]


class RunRequest(BaseModel):
    """What a caller asks for. This is also the JSON payload of ``send_task("agentfleet.run")``.

    ``tools`` names the tools the model may call: omitted means every registered tool (through
    the API: every tool the API and every live worker have), an empty list means none. Size
    limits come from settings (:func:`limit_problems`).
    """

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    input: Prompt = Field(description="The user's prompt.")
    system: str | None = Field(default=None, description="Optional system prompt.")
    model: str | None = Field(
        default=None,
        max_length=200,
        description="A model, 'provider:model', or an alias naming a fallback chain.",
    )
    providers: list[str] | None = Field(
        default=None, max_length=16, description="An explicit provider chain, in order."
    )
    tools: list[str] | None = None
    max_steps: int | None = Field(default=None, ge=1, description="LLM calls allowed.")
    metadata: dict[str, str] = Field(default_factory=dict)
    # Strict: a lax bool would take "yes", "on" or 1 from JSON and guess what was meant.
    stream: StrictBool = Field(
        default=False, description="Stream the model's tokens as events of the run."
    )
    callback_url: HttpUrl | None = Field(
        default=None, description="POSTed the final record, signed, when the run finishes."
    )


class ToolCallRequest(BaseModel):
    """One tool call. ``id`` makes it idempotent: the same ID runs the tool once."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    id: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[\w.:-]+$")
    name: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict)


def limit_problems(request: RunRequest, settings: Settings) -> list[tuple[str, str]]:
    """``(field, message)`` for every limit ``request`` breaks; empty when it is acceptable."""
    problems: list[tuple[str, str]] = []
    prompt_chars = len(request.input) + len(request.system or "")
    if prompt_chars > settings.max_input_chars:
        problems.append(
            (
                "input",
                f"input and system prompt are {prompt_chars} characters; "
                f"the limit is {settings.max_input_chars}",
            )
        )
    if request.max_steps is not None and request.max_steps > settings.max_steps_limit:
        problems.append(
            (
                "max_steps",
                f"max_steps is {request.max_steps}; the limit is {settings.max_steps_limit}",
            )
        )
    if request.tools is not None:
        if len(request.tools) > settings.max_tools_per_run:
            problems.append(
                (
                    "tools",
                    f"{len(request.tools)} tools requested; the limit is "
                    f"{settings.max_tools_per_run}",
                )
            )
        unknown = sorted({t for t in request.tools if t not in registry})
        if unknown:
            problems.append(("tools", f"unknown tools: {', '.join(unknown)}"))
    try:
        resolve_chain(settings, request.model, request.providers)
    except RoutingError as exc:
        problems.append(("providers" if request.providers else "model", str(exc)))
    metadata_bytes = len(json.dumps(request.metadata).encode())
    if metadata_bytes > settings.max_metadata_bytes:
        problems.append(
            (
                "metadata",
                f"metadata is {metadata_bytes} bytes as JSON; the limit is "
                f"{settings.max_metadata_bytes}",
            )
        )
    return problems


def tool_call_problems(request: ToolCallRequest) -> list[tuple[str, str]]:
    """``(field, message)`` for an unknown tool or arguments that do not fit its schema."""
    if request.name not in registry:
        return [("name", f"no tool named {request.name!r}")]
    try:
        registry.get(request.name).validate(request.arguments)
    except ToolArgumentsError as exc:
        return [("arguments", str(exc))]
    return []


class RunItem(RunRequest):
    """A batch item: one agent run."""

    type: Literal["run"] = "run"


class PromptItem(BaseModel):
    """A batch item: one prompt answered by one LLM call, without tools."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["prompt"]
    input: Prompt
    system: str | None = None
    model: str | None = Field(default=None, max_length=200)
    metadata: dict[str, str] = Field(default_factory=dict)

    def as_run(self) -> RunRequest:
        return RunRequest(
            input=self.input,
            system=self.system,
            model=self.model,
            tools=[],
            max_steps=1,
            metadata=self.metadata,
        )


class ToolCallItem(BaseModel):
    """A batch item: one tool call."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["tool_call"]
    name: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict)


BatchItem = Annotated[RunItem | PromptItem | ToolCallItem, Field(discriminator="type")]


class BatchRequest(BaseModel):
    """Many runs, prompts or tool calls, finished as one; ``type`` defaults to ``run``."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    items: list[BatchItem] = Field(min_length=1)
    callback_url: HttpUrl | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("items", mode="before")
    @classmethod
    def _default_type(cls, value: object) -> object:
        if isinstance(value, list):
            return [
                {**v, "type": v.get("type", "run")} if isinstance(v, dict) else v for v in value
            ]
        return value


def batch_problems(request: BatchRequest, settings: Settings) -> list[tuple[str, str]]:
    """``(field, message)`` for the batch's size and for every item's own problems."""
    if len(request.items) > settings.max_batch_items:
        return [
            (
                "items",
                f"{len(request.items)} items; the limit is {settings.max_batch_items}",
            )
        ]
    problems: list[tuple[str, str]] = []
    for index, item in enumerate(request.items):
        if isinstance(item, ToolCallItem):
            found = tool_call_problems(ToolCallRequest(name=item.name, arguments=item.arguments))
        else:
            found = limit_problems(
                item.as_run() if isinstance(item, PromptItem) else item, settings
            )
        problems += [(f"items.{index}.{f}", m) for f, m in found]
        if len(problems) >= 20:  # enough to fix; a 10,000-item report helps nobody
            break
    return problems
