"""A run's record as the store hands it out: parsed once, typed.

Redis keeps a run as a hash of strings (:func:`agentfleet.tasks.keys.run`); :meth:`RunRecord.parse`
is the one place that turns it into numbers, an enum and lists. The hash itself stays at hand
as :attr:`RunRecord.fields` for the API's view of the run, which shows it field by field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentfleet.tasks import keys
from agentfleet.tasks.llm._routing import Target
from agentfleet.tasks.models import DEFAULT_TENANT
from agentfleet.tasks.states import RunStatus


def _int(fields: Mapping[str, str], name: str) -> int:
    # Counters are written by HINCRBY (integers) or HSET of a Python number (maybe "3.0").
    return int(float(fields.get(name) or 0))


def _time(fields: Mapping[str, str], name: str) -> float | None:
    value = fields.get(name)
    return float(value) if value else None


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
    #: The run's own budgets (None: none).
    max_total_tokens: int | None
    max_cost: float | None
    #: ``fail`` or ``wait`` when its tenant's daily budget is spent.
    budget_policy: str
    #: Unix times: created, its first step claimed, made final (None: not yet).
    created_at: float
    started_at: float | None
    finished_at: float | None
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
            max_total_tokens=_int(fields, "max_total_tokens") or None,
            max_cost=float(fields["max_cost"]) if fields.get("max_cost") else None,
            budget_policy=fields.get("budget_policy", "fail"),
            created_at=float(fields.get("created_at") or 0),
            started_at=_time(fields, "started_at"),
            finished_at=_time(fields, "finished_at"),
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

    def gen(self, step: int) -> str:
        """The generation of the answer applied as ``step`` ('' if none is)."""
        return self.fields.get(keys.gen_field(step), "")

    def tool_calls(self, step: int) -> int:
        """How many tool calls ``step`` dispatched."""
        return _int(self.fields, keys.tools_field(step))

    def delivered(self, step: int) -> bool:
        """Whether a delivery of ``step`` ever claimed it (also one that gave it back since)."""
        return bool(self.fields.get(keys.deliveries_field(step)))
