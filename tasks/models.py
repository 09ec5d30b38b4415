"""Versioned payloads on the wire and the records kept in Redis."""

from __future__ import annotations

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

from agentfleet.tasks.states import RunStatus as RunStatus  # re-exported: also imported from here

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
    limits come from settings (:func:`agentfleet.tasks.intake.admit_run`).
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
