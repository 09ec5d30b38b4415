"""Run, tool-call and batch records as the store hands them out: parsed once, typed.

Redis keeps each as a hash of strings (:func:`agentfleet.tasks.keys.run`,
:func:`~agentfleet.tasks.keys.tool`, :func:`~agentfleet.tasks.keys.batch`); the ``parse``
class methods here are the one place that turns them into numbers, enums and JSON values.
A field the hash lacks (a record written by an earlier release, or one a script wrote only in
part) gets its default. A run's hash itself stays at hand as :attr:`RunRecord.fields` for the
API's view of the run, which shows it field by field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentfleet.tasks import keys
from agentfleet.tasks.llm._routing import Target
from agentfleet.tasks.models import DEFAULT_TENANT
from agentfleet.tasks.states import BatchStatus, RunStatus, ToolCallStatus


def _int(fields: Mapping[str, str], name: str) -> int:
    # Counters are written by HINCRBY (integers) or HSET of a Python number (maybe "3.0").
    return int(float(fields.get(name) or 0))


def _time(fields: Mapping[str, str], name: str) -> float | None:
    value = fields.get(name)
    return float(value) if value else None


def _json(fields: Mapping[str, str], name: str) -> Any:
    value = fields.get(name)
    return json.loads(value) if value else None


@dataclass(frozen=True)
class Usage:
    """What a run has spent on its LLM calls."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0
    #: Prompt tokens the provider served from its cache (part of ``prompt_tokens``).
    cached_tokens: int = 0
    #: US dollars, at the prices of the providers that answered.
    cost: float = 0.0
    #: Answers that came from the response cache (no provider call, no cost).
    cache_hits: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class RunRecord:
    """A run's record. Steps count from 1; ``applied_step`` is the last step whose answer is in
    the transcript, ``dispatched_step`` the last whose successor is enqueued (or that ended the
    run); 0 before the first."""

    id: str
    status: RunStatus
    tenant: str
    #: The tenant's cap on runs in flight when the run was created (0: none).
    cap: int
    model: str
    #: The providers and models to try, in order.
    chain: tuple[Target, ...]
    max_steps: int
    step: int
    applied_step: int
    dispatched_step: int
    tools_total: int
    tools_done: int
    usage: Usage
    #: The tools the run was accepted with.
    tools: tuple[str, ...]
    stream: bool
    batch_id: str
    callback_url: str
    #: The agent the run runs ('' for a run defined by its request alone).
    agent: str
    #: The run's conversation thread ('' for none); it belongs to the run's tenant.
    thread_id: str
    #: Model settings sent with every LLM call of the run (the request's body fields).
    model_settings: Mapping[str, Any]
    #: The JSON schema the final answer must match (None: any text).
    output_schema: dict[str, Any] | None
    #: Tokens the transcript may take in each LLM call (None: the fleet's default).
    context_budget: int | None
    #: Whether what the context budget leaves out is replaced by a summary.
    context_summary: bool
    #: Seconds an LLM answer is reused and kept (agentfleet.tasks.llm_cache); None: no cache.
    cache_ttl: float | None
    #: The run's own budgets (None: none).
    max_total_tokens: int | None
    max_cost: float | None
    #: ``fail`` or ``wait`` when its tenant's daily budget is spent.
    budget_policy: str
    #: Tools whose calls wait for a person's approval in this run (``*``: every tool), beside
    #: the tools that require it themselves (agentfleet.tasks.waits).
    approval_required: tuple[str, ...]
    #: Seconds a wait for a person may last (None: no limit), what happens then (``fail``,
    #: ``deny`` or ``default``) and the answer a question gets under ``default``.
    wait_timeout: float | None
    on_wait_timeout: str
    wait_default: str | None
    #: Agents the run's model may call, each call a child run (agentfleet.tasks.children).
    subagents: tuple[str, ...]
    #: Agents the run's model may hand the conversation over to (agentfleet.tasks.handoffs).
    handoffs: tuple[str, ...]
    #: A child run's parent ('' for a run a caller started), the run at the top of its tree
    #: (itself for such a run) and how far below it the run is (0 at the top).
    parent_id: str
    root_id: str
    depth: int
    #: Unix times: created, its first step claimed, made final (None: not yet).
    created_at: float
    started_at: float | None
    finished_at: float | None
    #: The W3C trace context the run was created in ('' without tracing): where what is sent
    #: for the run outside its own spans joins its trace (agentfleet.tasks.tracing).
    traceparent: str
    #: Whether its transcript outlives it in Redis (its tenant's ``tenant_no_transcript``):
    #: if not, the script that makes it final deletes it.
    keeps_transcript: bool
    #: The hash as stored, every field a string.
    fields: Mapping[str, str] = field(repr=False)

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> RunRecord:
        """The record of the hash ``fields`` (a run's, as ``HGETALL`` returns it)."""
        return cls(
            id=fields["id"],
            status=RunStatus(fields["status"]),
            tenant=fields.get("tenant", DEFAULT_TENANT),
            cap=_int(fields, "cap"),
            model=fields.get("model", ""),
            chain=tuple(Target(p, m) for p, m in json.loads(fields.get("chain") or "[]")),
            max_steps=_int(fields, "max_steps"),
            step=_int(fields, "step"),
            applied_step=_int(fields, "applied_step"),
            dispatched_step=_int(fields, "dispatched_step"),
            tools_total=_int(fields, "tools_total"),
            tools_done=_int(fields, "tools_done"),
            usage=Usage(
                _int(fields, "prompt_tokens"),
                _int(fields, "completion_tokens"),
                _int(fields, "llm_calls"),
                _int(fields, "cached_tokens"),
                float(fields.get("cost") or 0),
                _int(fields, "cache_hits"),
            ),
            tools=tuple(json.loads(fields.get("tools") or "[]")),
            stream=fields.get("stream") == "1",
            batch_id=fields.get("batch_id", ""),
            callback_url=fields.get("callback_url", ""),
            agent=fields.get("agent", ""),
            thread_id=fields.get("thread_id", ""),
            model_settings=json.loads(fields.get("model_settings") or "{}"),
            output_schema=json.loads(fields["output_schema"])
            if fields.get("output_schema")
            else None,
            context_budget=_int(fields, "context_budget") or None,
            context_summary=fields.get("context_summary") == "1",
            cache_ttl=float(fields["cache_ttl"]) if fields.get("cache_ttl") else None,
            max_total_tokens=_int(fields, "max_total_tokens") or None,
            max_cost=float(fields["max_cost"]) if fields.get("max_cost") else None,
            budget_policy=fields.get("budget_policy", "fail"),
            approval_required=tuple(json.loads(fields.get("approval_required") or "[]")),
            wait_timeout=float(fields["wait_timeout"]) if fields.get("wait_timeout") else None,
            on_wait_timeout=fields.get("on_wait_timeout", "fail"),
            wait_default=fields.get("wait_default"),
            subagents=tuple(json.loads(fields.get("subagents") or "[]")),
            handoffs=tuple(json.loads(fields.get("handoffs") or "[]")),
            parent_id=fields.get("parent_id", ""),
            root_id=fields.get("root_id") or fields["id"],
            depth=_int(fields, "depth"),
            created_at=float(fields.get("created_at") or 0),
            started_at=_time(fields, "started_at"),
            finished_at=_time(fields, "finished_at"),
            traceparent=fields.get("traceparent", ""),
            keeps_transcript=fields.get(keys.NO_TRANSCRIPT_FIELD) != "1",
            fields=dict(fields),
        )

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def input_index(self) -> int | None:
        """Where a thread run's own input is in its transcript (after its system prompt and
        the history it started with); None for a run on no thread (its first user message)."""
        if "head" in self.fields:
            return _int(self.fields, "head") + _int(self.fields, "history")
        return None

    @property
    def decisions(self) -> dict[str, dict[str, Any]]:
        """What a person decided on the calls the run waited for, by call ID (decide.lua)."""
        return _json(self.fields, "decisions") or {}

    def gen(self, step: int) -> str:
        """The generation of the answer applied as ``step`` ('' if none is)."""
        return self.fields.get(keys.gen_field(step), "")

    def tool_calls(self, step: int) -> int:
        """How many tool calls ``step`` dispatched."""
        return _int(self.fields, keys.tools_field(step))

    def delivered(self, step: int) -> bool:
        """Whether a delivery of ``step`` ever claimed it (also one that gave it back since)."""
        return bool(self.fields.get(keys.deliveries_field(step)))


@dataclass(frozen=True)
class ToolCallRecord:
    """A tool call's record: a standalone call (the API's, a batch's, one sent by name) or one
    a run's step made (``<run>-<step>-<index>``)."""

    id: str
    name: str
    status: ToolCallStatus
    #: The tenant that created the call; '' when none is stored: a run's call belongs to its
    #: run's tenant, a call sent by name to tenant ``default``.
    tenant: str
    #: The run whose step made the call ('' for a standalone call).
    run_id: str
    #: The batch the call is an item of ('' for none).
    batch_id: str
    #: The arguments as JSON, or their text as stored when it is no JSON (a model's malformed
    #: arguments, which the tool refuses); None before any are stored.
    arguments: Any
    #: The structured result (``ok`` with ``output`` or ``error``); None until it is stored.
    result: dict[str, Any] | None
    #: Deliveries that began the call.
    attempts: int
    #: Unix times: created, last begun, its result stored (None: not yet, or not recorded).
    created_at: float | None
    started_at: float | None
    finished_at: float | None

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> ToolCallRecord:
        """The record of the hash ``fields`` (a tool call's, as ``HGETALL`` returns it)."""
        return cls(
            id=fields.get("id", ""),
            name=fields.get("name", ""),
            # A call's record made when it begins (a run's, or one sent by name) has no status
            # until the worker claims it.
            status=ToolCallStatus(fields.get("status") or ToolCallStatus.QUEUED),
            tenant=fields.get("tenant", ""),
            run_id=fields.get("run_id", ""),
            batch_id=fields.get("batch_id", ""),
            arguments=_arguments(fields.get("arguments")),
            result=_json(fields, "result"),
            attempts=_int(fields, "attempts"),
            created_at=_time(fields, "created_at"),
            started_at=_time(fields, "started_at"),
            finished_at=_time(fields, "finished_at"),
        )

    @property
    def terminal(self) -> bool:
        return self.status.terminal


def _arguments(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class BatchCounts:
    """A batch's items that ended in each final status."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


@dataclass(frozen=True)
class BatchRecord:
    """A batch's record; its items are a list beside it (``keys.batch_items``)."""

    id: str
    status: BatchStatus
    #: The tenant that created it ('' for none: no tenant reads it).
    tenant: str
    #: Items in the batch, and how many of them are final.
    total: int
    completed: int
    counts: BatchCounts
    metadata: Mapping[str, Any]
    #: The aggregate the collector stored once every item was final (None: not yet).
    result: dict[str, Any] | None
    callback_url: str
    #: Written by the API but not accepted yet: nothing of it may start.
    pending: bool
    #: Unix times: created, its items published, collected (None: not yet, or not recorded).
    created_at: float | None
    dispatched_at: float | None
    finished_at: float | None

    @classmethod
    def parse(cls, fields: Mapping[str, str]) -> BatchRecord:
        """The record of the hash ``fields`` (a batch's, as ``HGETALL`` returns it)."""
        return cls(
            id=fields["id"],
            status=BatchStatus(fields.get("status") or BatchStatus.QUEUED),
            tenant=fields.get("tenant", ""),
            total=_int(fields, "total"),
            completed=_int(fields, "completed"),
            # The scripts count each final item under n_<its status> (count_in_batch).
            counts=BatchCounts(
                _int(fields, "n_succeeded"), _int(fields, "n_failed"), _int(fields, "n_cancelled")
            ),
            metadata=_json(fields, "metadata") or {},
            result=_json(fields, "result"),
            callback_url=fields.get("callback_url", ""),
            pending=bool(fields.get("pending")),
            created_at=_time(fields, "created_at"),
            dispatched_at=_time(fields, "dispatched_at"),
            finished_at=_time(fields, "finished_at"),
        )

    @property
    def terminal(self) -> bool:
        return self.status.terminal
