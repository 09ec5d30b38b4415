"""Response bodies of the HTTP API, and a run's events.

The API declares its answers with these same models (``agentfleet.producer.schemas``), so the
client and the server cannot disagree about them. Request bodies are the fleet's payload
models (``agentfleet.tasks.models``); the client sends them as plain JSON.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

#: A caller's own model of a typed result.
M = TypeVar("M", bound=BaseModel)

#: A run's final statuses (and the types of its final events).
RUN_FINAL = frozenset({"succeeded", "failed", "cancelled"})
#: A tool call's final statuses (``cancelled``: an item of a cancelled batch that had not
#: started, or a call of a cancelled run).
TOOL_CALL_FINAL = frozenset({"succeeded", "failed", "cancelled"})


class Links(BaseModel):
    self: str


class Accepted(BaseModel):
    """202: the work is queued; poll ``links.self``."""

    id: str
    status: str
    links: Links


class Progress(BaseModel):
    step: int
    max_steps: int
    tool_calls_done: int
    tool_calls_total: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    llm_calls: int
    cached_tokens: int = 0
    #: US dollars, at the providers' configured prices.
    cost: float = 0.0
    #: Answers from the response cache (``cache_ttl``): no provider call, no cost.
    cache_hits: int = 0


class ErrorInfo(BaseModel):
    code: str
    message: str


class PendingCall(BaseModel):
    """A tool call a waiting run waits for a person to decide: to approve (``kind``
    ``approval``) or to answer (``input``: the model asked ``question``)."""

    id: str
    kind: Literal["approval", "input"]
    name: str
    arguments: str
    """As the model sent them: JSON text."""
    model_call_id: str | None = None
    question: str | None = None
    decision: Literal["approve", "deny", "answer"] | None = None
    """Set once a person decided the call (the run waits until every call is decided)."""


class Waiting(BaseModel):
    """Why a run is not making progress right now: a running run waiting for a provider or a
    budget (``retry_at``), or a ``waiting`` run waiting for a person (``approval`` or
    ``input``: the ``pending`` calls, until ``timeout_at`` if the run has a wait timeout)."""

    reason: str
    detail: str
    retry_at: str | None = None
    step: int | None = None
    pending: list[PendingCall] | None = None
    timeout_at: str | None = None
    on_timeout: str | None = None


class Run(BaseModel):
    """A run. ``result`` is the answer's text, or for a typed run (an output schema) its JSON
    value, with the text in ``result_text``; :meth:`output` parses it into your model."""

    id: str
    status: Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled"]
    agent: str | None = None
    thread_id: str | None = None
    model: str | None
    provider: str | None
    worker: str | None
    waiting: Waiting | None
    progress: Progress
    usage: Usage
    result: Any
    result_text: str | None = None
    error: ErrorInfo | None
    metadata: dict[str, str]
    parent_id: str | None = None
    """The run whose sub-agent call this run is (None for a run a caller started)."""
    root_id: str | None = None
    depth: int = 0
    children: list[str] | None = None
    """The sub-agent runs it started (``GET /v1/runs/{id}`` only)."""
    tree_usage: Usage | None = None
    """Its usage and all its descendants' together (``GET /v1/runs/{id}`` only)."""
    created_at: str | None
    started_at: str | None
    finished_at: str | None

    def output(self, model: type[M]) -> M:
        """The typed result as an instance of ``model``; ValueError if the run has none (it did
        not succeed) and pydantic's ValidationError if it is not of ``model``."""
        if self.status != "succeeded" or self.result is None:
            raise ValueError(f"run {self.id} has no result: it is {self.status}")
        if isinstance(self.result, str):
            return model.model_validate_json(self.result)
        return model.model_validate(self.result)


class StepUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    cache_hits: int = 0


class StepToolCall(BaseModel):
    """A tool call of a step: arguments, outcome and timing (secrets redacted)."""

    id: str
    name: str | None
    arguments: Any = None
    status: str
    ok: bool | None = None
    output: Any = None
    error: ErrorInfo | None = None
    cached: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    latency_ms: int | None = None


class StepRetry(BaseModel):
    """An attempt of a step's LLM call that failed and was retried after ``countdown_s``."""

    attempt: int
    started_at: str | None = None
    failed_at: str | None = None
    error: str = ""
    countdown_s: float | None = None


class StepWait(BaseModel):
    """A time a step's LLM call was held: every provider unavailable, or the tenant's budget
    spent (``reason``), until ``retry_at``."""

    at: str | None = None
    reason: str | None = None
    detail: str | None = None
    retry_at: str | None = None


class Step(BaseModel):
    """One step of a run: what it sent (``input``: the messages new since the step before),
    its repair rounds, its answer, its tool calls, usage and timing (secrets redacted)."""

    step: int
    provider: str | None = None
    model: str | None = None
    worker: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    latency_ms: int | None = None
    usage: StepUsage
    input: list[dict[str, Any]]
    repairs: list[dict[str, Any]] = []
    output: dict[str, Any] | None = None
    #: What the context budget left out of the step's call (None: nothing).
    context: dict[str, Any] | None = None
    tool_calls: list[StepToolCall] = []
    #: Deliveries that began the step (more than one: a worker was lost, or a retry).
    deliveries: int = 0
    #: Times the step began its LLM call: its retries and waits, and the call answered.
    attempts: int = 0
    retries: list[StepRetry] = []
    waits: list[StepWait] = []


class RunSteps(BaseModel):
    """``GET /v1/runs/{id}/steps``. ``transcript``: ``not_kept`` for a run of a tenant whose
    transcripts do not outlive their runs: its steps carry no messages, tool arguments or
    outputs."""

    run_id: str
    status: str
    transcript: Literal["kept", "not_kept"] = "kept"
    steps: list[Step]


class RunPage(BaseModel):
    """A page of ``GET /v1/runs``: runs newest first, and the cursor of the next page (None:
    the last page)."""

    runs: list[Run]
    next_cursor: str | None = None


class ToolCall(BaseModel):
    id: str
    name: str | None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    run_id: str | None
    arguments: Any
    result: dict[str, Any] | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class ToolNode(BaseModel):
    """A live worker that has a tool, and the hash of its version of the tool's schema."""

    node: str
    queues: list[str]
    schema_hash: str


class ToolInfo(BaseModel):
    """A tool the API or a live worker has. ``parameters`` is the API's version when it has
    the tool, else a worker's; ``mismatches`` says where the fleet disagrees about it."""

    name: str
    description: str
    parameters: dict[str, Any]
    schema_hash: str = ""
    on_api: bool = True
    nodes: list[ToolNode] = []
    queues: list[str] = []
    mismatches: list[str] = []


class NodeInfo(BaseModel):
    """A live worker node and the tools it has registered."""

    node: str
    queues: list[str]
    tools: list[str]
    published_at: float


class ToolList(BaseModel):
    tools: list[ToolInfo]
    nodes: list[NodeInfo] = []
    mismatch: bool = False


class ThreadRun(BaseModel):
    id: str
    status: str


class Thread(BaseModel):
    """A conversation thread: a page of its history (``messages`` from ``offset`` of
    ``messages_total``), the run ``running`` on it and those ``waiting``, its latest ``runs``."""

    id: str
    created_at: str | None
    updated_at: str | None
    turns: int
    messages_total: int
    offset: int
    messages: list[dict[str, Any]]
    running: str | None
    waiting: list[str]
    runs: list[ThreadRun]


class AgentNode(BaseModel):
    """A live worker that has an agent, and the digest of its version of the definition."""

    node: str
    queues: list[str]
    digest: str


class AgentInfo(BaseModel):
    """A declared agent: its definition as the API has it (or, if the API lacks it, only what
    the workers publish: name and digest), the live workers that have it, and where the fleet
    disagrees about it."""

    name: str
    description: str = ""
    instructions: str = ""
    model: str | list[str] | None = None
    providers: list[str] | None = None
    tools: list[str] | None = None
    input_schema: dict[str, Any] = {}
    output_schema: dict[str, Any] | None = None
    strict_output: bool = False
    model_settings: dict[str, Any] = {}
    max_steps: int | None = None
    context_budget: int | None = None
    cache_ttl: float | None = None
    context_summary: bool = False
    output_repairs: int | None = None
    allow_overrides: list[str] = []
    subagents: list[str] = []
    handoffs: list[str] = []
    source: str = ""
    digest: str = ""
    on_api: bool = True
    nodes: list[AgentNode] = []
    mismatches: list[str] = []


class AgentList(BaseModel):
    agents: list[AgentInfo]


class ModelSpend(BaseModel):
    """What a tenant's calls to one model used on a day."""

    model: str
    tokens: int
    cost: float
    calls: int


class TenantBudget(BaseModel):
    tokens_per_day: int | None = None
    cost_per_day: float | None = None


class UsageReport(BaseModel):
    """``GET /v1/usage``: a tenant's LLM spend on one UTC day, and its daily budget."""

    tenant: str
    day: str
    tokens: int
    cost: float
    calls: int
    #: What calls in flight hold against the budget until they are settled.
    held_tokens: int
    held_cost: float
    models: list[ModelSpend]
    budget: TenantBudget | None
    #: When today's budget resets (None for an earlier day).
    resets_at: str | None


class LimiterFill(BaseModel):
    limit_per_minute: int
    in_use: float
    burst: float
    fill: float


class ProviderState(BaseModel):
    """A provider as the whole fleet sees it."""

    name: str
    base_url: str
    state: Literal["closed", "open", "half-open"]
    failures: int
    fail_max: int
    opened_at: float | None
    seconds_to_half_open: float
    probes_in_flight: int
    held_for_seconds: float
    rpm: LimiterFill | None
    tpm: LimiterFill | None


class ProviderList(BaseModel):
    providers: list[ProviderState]


class Health(BaseModel):
    ok: bool
    redis: str


class BatchItemView(BaseModel):
    id: str
    kind: Literal["run", "tool_call"]
    status: str
    result: Any = None
    error: Any = None


class BatchCounts(BaseModel):
    succeeded: int
    failed: int
    cancelled: int


class Batch(BaseModel):
    """A batch: ``completed`` of ``total`` items are final; ``result`` once all are."""

    id: str
    status: Literal["queued", "running", "completed", "cancelled"]
    total: int
    completed: int
    counts: BatchCounts
    items: list[BatchItemView]
    items_offset: int
    result: dict[str, Any] | None
    metadata: dict[str, str]
    created_at: str | None
    finished_at: str | None


class Event(BaseModel):
    """One event of a run: ``id`` (resume after it), ``type`` (``queued``, ``started``,
    ``llm_call_started``, ..., ``token``, and last one of ``succeeded``, ``failed``,
    ``cancelled``) and its ``data``, which always holds the ``run_id``."""

    model_config = ConfigDict(frozen=True)

    id: str
    type: str
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        """Whether this is the run's last event."""
        return self.type in RUN_FINAL
