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
    PlainValidator,
    StrictBool,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from agentfleet.tasks.states import RunStatus as RunStatus  # re-exported: also imported from here

#: Tenant names: short, and safe inside Redis keys.
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: The tenant of runs sent without one (``send_task`` callers that do not name theirs).
DEFAULT_TENANT = "default"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("input is blank: it needs a character other than whitespace")
    return value


#: Thread IDs: safe inside Redis keys (no colon) and URLs.
THREAD_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
ThreadPolicy = Literal["enqueue", "reject", "interrupt"]
ThreadHistory = Literal["messages", "full"]
#: What a run does when its tenant's daily budget refuses its next LLM call.
BudgetPolicy = Literal["fail", "wait"]
#: What a wait for a person that times out comes to (agentfleet.tasks.waits).
WaitTimeoutPolicy = Literal["fail", "deny", "default"]
#: A tool's name as a run names it, or ``*`` (every tool) where a list of tools allows it.
ToolName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^(\*|[A-Za-z0-9_-]+)$")]

#: Agent names: as tool names, safe in Redis keys and in a provider's ``response_format``.
AGENT_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


#: A prompt: at least one character that is not whitespace. The schema's pattern says so to
#: clients; the validator says it in words.
Prompt = Annotated[
    str, Field(min_length=1, json_schema_extra={"pattern": r"\S"}), AfterValidator(_not_blank)
]


def _prompt_or_object(value: object) -> str | dict[str, Any]:
    if isinstance(value, str):
        if not value:
            # As a plain ``Prompt`` field said it, so the answer stays the same.
            raise PydanticCustomError(
                "string_too_short", "String should have at least 1 character", {"min_length": 1}
            )
        return _not_blank(value)
    if isinstance(value, dict):
        return value
    raise ValueError("input must be text, or an object for an agent that takes one")


#: A run's input: a prompt, or an object for an agent with an input type. One validator, so a
#: problem is named ``input`` whichever form was meant.
RunInput = Annotated[
    str | dict[str, Any],
    PlainValidator(_prompt_or_object),
    WithJsonSchema(
        {"anyOf": [{"type": "string", "minLength": 1, "pattern": r"\S"}, {"type": "object"}]}
    ),
]


class FunctionChoice(BaseModel):
    """``tool_choice`` naming one function: the model must call it."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: dict[Literal["name"], str]


class ModelSettings(BaseModel):
    """Sampling and tool-use settings passed to the provider as they are (the chat-completions
    parameters of the same names). Unset ones are not sent: the provider's defaults apply.
    Unknown names or values out of the API's ranges are refused (422), never passed on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = Field(default=None, description="Up to 4 stop sequences.")
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = Field(
        default=None, description="Sent only to providers that take it (reasoning models)."
    )

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not 1 <= len(value) <= 4:
            raise ValueError("stop takes 1 to 4 sequences")
        return value

    def body(self) -> dict[str, Any]:
        """The request body's fields: those set, as JSON."""
        return self.model_dump(mode="json", exclude_none=True)

    def merged(self, override: ModelSettings | None) -> ModelSettings:
        """These settings with those ``override`` sets put over them."""
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_unset=True, exclude_none=True))


def _unset(value: object) -> bool:
    return value is None


class RunRequest(BaseModel):
    """What a caller asks for. This is also the JSON payload of ``send_task("agentfleet.run")``.

    Fields added since version 1 was published are left out of its JSON while unset, so a
    request of an earlier release dumps (and fingerprints, for its Idempotency-Key) the same.

    ``tools`` names the tools the model may call: omitted means every registered tool (through
    the API: every tool the API and every live worker have), an empty list means none. Size
    limits come from settings (:func:`agentfleet.tasks.intake.admit_run`).
    """

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    agent: str | None = Field(
        default=None,
        exclude_if=_unset,
        pattern=AGENT_NAME_PATTERN,
        description="A declared agent to run (GET /v1/agents); the other fields then override "
        "its definition where it allows.",
    )
    input: RunInput = Field(
        description="The user's prompt; an object for an agent with an input schema."
    )
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
    model_settings: ModelSettings | None = Field(
        default=None,
        exclude_if=_unset,
        description="Temperature, max_tokens, seed, ... passed to the provider.",
    )
    context_budget: int | None = Field(
        default=None,
        exclude_if=_unset,
        ge=256,
        le=10_000_000,
        description="Tokens the transcript may take in each LLM call; the oldest turns go "
        "first (default: the agent's, else AGENTFLEET_DEFAULT_CONTEXT_BUDGET).",
    )
    context_summary: StrictBool | None = Field(
        default=None,
        exclude_if=_unset,
        description="Replace what the context budget leaves out with a summary made by "
        "AGENTFLEET_CONTEXT_SUMMARY_MODEL (default: the agent's; false).",
    )
    output_schema: dict[str, Any] | None = Field(
        default=None,
        exclude_if=_unset,
        description="A JSON schema the final answer must match: the run's result is then the "
        "JSON value.",
    )
    thread_id: str | None = Field(
        default=None,
        exclude_if=_unset,
        pattern=THREAD_ID_PATTERN,
        description="A conversation thread of the caller's tenant: its history starts the "
        "run, and the run's turn is added to it if the run succeeds.",
    )
    thread_policy: ThreadPolicy | None = Field(
        default=None,
        exclude_if=_unset,
        description="While another run of the thread is unfinished: enqueue (the default: "
        "wait its turn), reject (409), or interrupt (cancel the runs ahead).",
    )
    thread_history: ThreadHistory | None = Field(
        default=None,
        exclude_if=_unset,
        description="What of this run the thread keeps: messages (the input and the final "
        "answer, the default) or full (also tool calls and their results).",
    )
    cache_ttl: float | None = Field(
        default=None,
        exclude_if=_unset,
        ge=1,
        le=30 * 86_400,
        description="Reuse an answer to exactly the same LLM call (model chain, messages, "
        "tools, settings, output schema) made by any run of the tenant in the last "
        "cache_ttl seconds, and keep this run's answers as long (default: the agent's; none).",
    )
    max_total_tokens: int | None = Field(
        default=None,
        exclude_if=_unset,
        ge=1,
        le=10**9,
        description="Tokens (prompt and completion) the run's LLM calls may use in all; "
        "the run fails with budget_exceeded before a call that would pass it.",
    )
    max_cost: float | None = Field(
        default=None,
        exclude_if=_unset,
        gt=0,
        le=10**6,
        description="US dollars the run's LLM calls may cost in all (providers' prices).",
    )
    budget_policy: BudgetPolicy | None = Field(
        default=None,
        exclude_if=_unset,
        description="When the tenant's daily budget is spent mid-run: fail (the default, "
        "budget_exceeded) or wait, holding no worker, until the budget resets.",
    )
    subagents: list[Annotated[str, Field(pattern=AGENT_NAME_PATTERN)]] | None = Field(
        default=None,
        exclude_if=_unset,
        max_length=32,
        description="Agents the model may call like tools: each call is a child run of that "
        "agent, and its result is the tool result (default: the agent's sub-agents).",
    )
    handoffs: list[Annotated[str, Field(pattern=AGENT_NAME_PATTERN)]] | None = Field(
        default=None,
        exclude_if=_unset,
        max_length=32,
        description="Agents the model may hand the conversation over to (a tool "
        "transfer_to_<agent> each): the run goes on with that agent's instructions, tools "
        "and output type (default: the agent's handoffs).",
    )
    approval_required: list[ToolName] | None = Field(
        default=None,
        exclude_if=_unset,
        max_length=64,
        description="Tools whose calls wait for a person's approval (POST "
        "/v1/runs/{id}/approvals) before they run; ['*'] for every tool. Tools declared "
        "with requires_approval always do.",
    )
    wait_timeout: float | None = Field(
        default=None,
        exclude_if=_unset,
        ge=1,
        le=30 * 86_400,
        description="Seconds the run may wait for a person (an approval, an answer); "
        "none by default.",
    )
    on_wait_timeout: WaitTimeoutPolicy | None = Field(
        default=None,
        exclude_if=_unset,
        description="When a wait times out: fail the run (wait_timeout, the default), deny "
        "(pending calls are denied, questions get no answer), or default (questions get "
        "wait_default, pending calls are denied).",
    )
    wait_default: str | None = Field(
        default=None,
        exclude_if=_unset,
        max_length=10_000,
        description="The answer a question gets when its wait times out (on_wait_timeout: "
        "default).",
    )
    metadata: dict[str, str] = Field(default_factory=dict)
    # Strict: a lax bool would take "yes", "on" or 1 from JSON and guess what was meant.
    stream: StrictBool = Field(
        default=False, description="Stream the model's tokens as events of the run."
    )
    callback_url: HttpUrl | None = Field(
        default=None, description="POSTed the final record, signed, when the run finishes."
    )


class Decision(BaseModel):
    """A reviewer's decision on one call a run waits for (``POST /v1/runs/{id}/approvals``)."""

    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(min_length=1, max_length=300, description="The pending call's id.")
    approve: StrictBool
    arguments: dict[str, Any] | None = Field(
        default=None, description="Run the approved call with these arguments instead."
    )
    message: str | None = Field(
        default=None, max_length=10_000, description="Shown to the model with the decision."
    )


class ApprovalsRequest(BaseModel):
    """Decisions on some or all of the calls a run waits to have approved."""

    model_config = ConfigDict(extra="forbid")

    decisions: list[Decision] = Field(min_length=1, max_length=64)


class InputRequest(BaseModel):
    """A person's answer to a question a run asked (``POST /v1/runs/{id}/input``)."""

    model_config = ConfigDict(extra="forbid")

    answer: str = Field(max_length=100_000)
    call_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=300,
        description="The question's call id; needed only when the run asked several.",
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
