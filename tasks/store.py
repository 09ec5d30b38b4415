"""Run and tool-call records in Redis, and the atomic transitions that make steps idempotent.

The records and their keys (a run's hash, transcript, lease and event stream; a tool call's
hash and lease; the active runs; tenant slots; batch totals) are named in
:mod:`agentfleet.tasks.keys`.

A run's hash is parsed here, once, into a :class:`~agentfleet.tasks.records.RunRecord`, a tool
call's into a :class:`~agentfleet.tasks.records.ToolCallRecord`; the scripts' replies become the
enums of :mod:`agentfleet.tasks.states`.

A step moves ``applied_step`` (its LLM answer is in the transcript) and then
``dispatched_step`` (its successor is enqueued, or the run is final). Each transition is one
Lua script (:mod:`agentfleet.tasks.scripts`), so a redelivered step finds out in one round trip what
is left to do, and a duplicate running alongside the original is held off by the lease. The same
scripts append the run's events and move its due time in ``<p>:runs:active``, so neither costs a
round trip.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from agentfleet.tasks import keys, scripts, tracing
from agentfleet.tasks.errors import RolledBack, ThreadBusy
from agentfleet.tasks.llm._routing import Target
from agentfleet.tasks.llm_cache import ResponseCache
from agentfleet.tasks.metrics import label_field
from agentfleet.tasks.models import RunRequest
from agentfleet.tasks.records import RunRecord, ToolCallRecord
from agentfleet.tasks.redisconn import get_redis
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.spend import TenantBudgets
from agentfleet.tasks.states import (
    AcceptOutcome,
    RunStatus,
    StepOutcome,
    ToolCallStatus,
    ToolOutcome,
)


@dataclass(frozen=True)
class StepClaim:
    """What :meth:`RunStore.begin_step` found.

    ``outcome`` is ``ok`` (the caller holds the lease; ``run`` is the record), ``busy``
    (another worker does; retry after ``wait_s``), ``done`` (already applied and dispatched),
    ``terminal``, ``missing``, ``throttled`` (its tenant has no free slot; the run waits its
    turn), ``poisoned`` (delivered more than ``max_redeliveries`` times), ``pending`` (not yet
    accepted by the API: it is, or the record expires, within ``wait_s``) or ``rolled_back``
    (the answer of the step before it is gone: a crash of Redis rolled it back; the run is due
    now, for the watchdog). ``token`` is also the generation of the answer this claim applies
    (see :mod:`agentfleet.tasks.scripts`).
    """

    outcome: StepOutcome
    token: str
    run: RunRecord | None
    messages: list[dict[str, Any]]
    wait_s: float = 0.0


@dataclass(frozen=True)
class ToolClaim:
    """What :meth:`RunStore.begin_tool` found: ``ok``, ``busy`` (``wait_s``), ``done``,
    ``cancelled`` (its run was cancelled), ``pending`` (not yet accepted by the API; within
    ``wait_s``), ``refused`` (never accepted: the call must not run), ``poisoned`` (begun
    ``max_redeliveries`` times before, each time losing its worker; the caller holds the lease,
    to store the failure) or ``stale`` (its run's step holds an answer of another generation:
    the one that asked for this call was rolled back by a crash of Redis). With ``ok``,
    ``tenant`` is the tenant the call belongs to ('' if unknown: its run is gone)."""

    outcome: ToolOutcome
    token: str
    result: dict[str, Any] | None = None
    wait_s: float = 0.0
    tenant: str = ""


@dataclass(frozen=True)
class CacheUse:
    """How one call of the cached tool ``tool`` (its name) used the cache: it looked ``key``
    up and found an entry (``hit``) or none; a miss's successful result is kept there for
    ``ttl_ms``."""

    key: str
    hit: bool
    ttl_ms: int
    tool: str


@dataclass(frozen=True)
class Finished:
    """A run's record after a transition, and what the caller must start because of it:
    ``kick``, a run of the same tenant that now has a slot, and ``batch``, a batch whose
    last item just finished."""

    record: RunRecord
    kick: str = ""
    batch: str = ""
    final: RunStatus | None = None  # the final status, when this transition made the run final
    #: A run made final while no message of it was queued (waiting for its tenant's slot):
    #: its entry message must be sent again, for a worker to record its end in Celery.
    resend: str = ""


_stores: dict[tuple[int, int], RunStore] = {}

#: What ``apply`` (agentfleet.tasks.scripts) answers when the answer a step builds on is gone.
ROLLED_BACK = -2


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _finished(
    record: dict[str, str], kick: str, batch: str, final: str, resend: str = ""
) -> Finished:
    """What a transition's reply says: the record, then what follows from it."""
    status = RunStatus(final) if final else None
    return Finished(RunRecord.parse(record), kick, batch, status, resend)


def parse_tool_call(call_id: str, data: dict[str, str]) -> ToolCallRecord | None:
    """The record of the hash ``data`` of tool call ``call_id`` (None if it is empty).

    Its key names the call: a record that a script found missing and wrote only in part
    (``complete_tool.lua`` stores a result on any key) lacks the ``id`` field."""
    return ToolCallRecord.parse({"id": call_id} | data) if data else None


def get_store(settings: Settings) -> RunStore:
    """The process's store for ``settings`` (its client is made after fork, see redisconn)."""
    key = (os.getpid(), id(settings))
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = RunStore(get_redis(settings), settings)
    return store


@dataclass(frozen=True)
class StepAnswer:
    """What a step stores once its model has answered."""

    messages: list[dict[str, Any]]  # the tool results it was given, then the model's message
    prompt_tokens: int
    completion_tokens: int
    tool_calls: int
    target: Target
    metrics: dict[str, Any]  # agentfleet.tasks.metrics.step_fields
    worker: str = ""
    asked: int = 0  # the tool calls the model asked for (``tool_calls`` are those dispatched)
    after: str = ""  # the generation of the previous step's answer, which this one builds on
    llm_calls: int = 1  # calls the answer took (a typed run's repair rounds add some)
    cached_tokens: int = 0
    cost: float = 0.0  # US dollars (agentfleet.tasks.spend)
    cache_hits: int = 0  # answers from the response cache (agentfleet.tasks.llm_cache)
    #: The tenant's spend to count as the answer is applied (spend(s) of _spend.lua); None when
    #: the calls were settled one by one against the tenant's budget.
    spend: list[dict[str, Any]] | None = None

    def payload(self) -> str:
        """The JSON the step-ending scripts take (``apply`` in :mod:`agentfleet.tasks.scripts`)."""
        return json.dumps(
            {
                "messages": [json.dumps(m) for m in self.messages],
                "after": self.after,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "tools_total": self.tool_calls,
                "asked": self.asked,
                "llm_calls": self.llm_calls,
                "cached_tokens": self.cached_tokens,
                "cost": self.cost,
                "cache_hits": self.cache_hits,
                "spend": self.spend or [],
                "provider": self.target.provider,
                "model": self.target.model,
                "worker": self.worker,
                "metrics": self.metrics,
            }
        )


class RunStore:
    """Reads and writes run and tool-call records. Safe to share across threads/greenlets."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._p = settings.redis.key_prefix
        #: Tenants' daily budgets (agentfleet.tasks.spend).
        self.budgets = TenantBudgets(client, settings)
        #: LLM answers kept for runs with a cache_ttl (agentfleet.tasks.llm_cache).
        self.llm_cache = ResponseCache(client, settings.redis.key_prefix)
        self._metrics = keys.MetricKeys(self._p)
        self._create_run = client.register_script(scripts.CREATE_RUN)
        self._accept = client.register_script(scripts.ACCEPT)
        self._begin_step = client.register_script(scripts.BEGIN_STEP)
        self._apply_step = client.register_script(scripts.APPLY_STEP)
        self._finish_step = client.register_script(scripts.FINISH_STEP)
        self._apply_and_finish_step = client.register_script(scripts.APPLY_AND_FINISH_STEP)
        self._cancel_run = client.register_script(scripts.CANCEL_RUN)
        self._wait_step = client.register_script(scripts.WAIT_STEP)
        self._decide = client.register_script(scripts.DECIDE)
        self._release_step = client.register_script(scripts.RELEASE_STEP)
        self._drop_lease = client.register_script(scripts.DROP_LEASE)
        self._create_tool = client.register_script(scripts.CREATE_TOOL)
        self._begin_tool = client.register_script(scripts.BEGIN_TOOL)
        self._complete_tool = client.register_script(scripts.COMPLETE_TOOL)
        self._cancel_tool = client.register_script(scripts.CANCEL_TOOL)

    def _ctx(self, run_id: str | None) -> str:
        """The context argument every script takes (see :mod:`agentfleet.tasks.scripts`)."""
        return json.dumps(
            {
                "now": time.time(),
                "prefix": self._p,
                "ttl": self.settings.retention.run_ttl,
                "maxlen": self.settings.retention.events_max_len,
                "run_id": run_id or "",
            }
        )

    # --- keys ----------------------------------------------------------------------------
    def run_key(self, run_id: str) -> str:
        return keys.run(self._p, run_id)

    def tool_key(self, call_id: str) -> str:
        return keys.tool(self._p, call_id)

    @property
    def active_key(self) -> str:
        return keys.active_runs(self._p)

    def _lease(self, run_id: str) -> str:
        return keys.run_lease(self._p, run_id)

    def _messages(self, run_id: str) -> str:
        return keys.run_messages(self._p, run_id)

    def due(self, seconds: float) -> float:
        """When progress is due for a stage that may take ``seconds``: after that, plus the
        stall allowance, the watchdog takes the run for lost."""
        return time.time() + seconds + self.settings.limits.stall_timeout

    # --- runs ----------------------------------------------------------------------------
    def create_run(
        self,
        run_id: str,
        request: RunRequest,
        tools: list[str],
        chain: list[Target],
        *,
        tenant: str = "default",
        batch_id: str | None = None,
        pending: str = "",
    ) -> bool:
        """Write a queued run with its first messages. False if the ID already exists.

        With a ``pending`` token the run is not accepted yet: no step starts until
        :meth:`accept` confirms it, and it expires unless that comes within
        :meth:`pending_ms`.
        """
        (outcome,) = self._create(
            [(run_id, request, tools, chain)], tenant=tenant, batch_id=batch_id, pending=pending
        )
        if outcome < 0:
            raise ThreadBusy(f"thread {request.thread_id!r} has an unfinished run")
        return outcome == 1

    def create_runs(
        self,
        runs: Sequence[tuple[str, RunRequest, list[str], list[Target]]],
        *,
        tenant: str = "default",
        batch_id: str | None = None,
        pending: str = "",
        extra: Sequence[dict[str, Any]] = (),
    ) -> int:
        """Write many queued runs in pipelined round trips; returns how many were new.
        ``extra``: fields written on each run's record beside those of its request."""
        return sum(
            1
            for r in self._create(
                runs, tenant=tenant, batch_id=batch_id, pending=pending, extra=extra
            )
            if r == 1
        )

    def _create(
        self,
        runs: Sequence[tuple[str, RunRequest, list[str], list[Target]]],
        *,
        tenant: str,
        batch_id: str | None,
        pending: str,
        extra: Sequence[dict[str, Any]] = (),
    ) -> list[int]:
        """create_run.lua for each run: 1 created, 0 the ID exists, -1 refused (its thread is
        busy and its policy is reject)."""
        calls = []
        window = self.pending_ms() if pending else 0
        for i, (run_id, request, tools, chain) in enumerate(runs):
            fields, messages = self._run_fields(run_id, request, tools, chain, tenant, batch_id)
            if i < len(extra):
                fields |= extra[i]
            if pending:
                fields["pending"] = pending
            calls.append(
                (
                    [self.run_key(run_id), keys.run_messages(self._p, run_id)],
                    [self._ctx(run_id), json.dumps(fields), self.due(0), window, *messages],
                )
            )
        return [int(r) for r in self._each(self._create_run, calls)]

    def pending_ms(self) -> int:
        """How long a pending record waits for :meth:`accept` before it expires."""
        return int(self.settings.api.pending_ttl * 1000)

    def accept(
        self,
        key: str,
        companion: str,
        token: str,
        *,
        run_id: str | None = None,
        slot: str = "",
        answer: str = "",
    ) -> tuple[AcceptOutcome, str]:
        """Accept the pending record ``key`` written with ``token`` (and ``companion``, a
        run's messages or a batch's items), and keep ``answer`` in the Idempotency-Key
        ``slot`` in the same step. ``run_id``: the record is that run's.

        Returns ``(outcome, the answer kept for the key)``. ``accepted``; ``sent``: Redis has
        the whole command but no reply came in time (it applies the command when it answers
        again, so the work is accepted unless Redis loses what it was sent); ``expired``: never
        accepted; ``answered``: a request with the same key was accepted first (this one's
        record is deleted). Raises ``RedisError`` only if the command was not sent.
        """
        due = str(self.due(0)) if run_id else ""
        script_keys = [key, companion, slot or keys.pending_slot(key)]
        args = [self._ctx(run_id), token, answer, self.settings.api.idempotency_ttl, due]
        reply = self._send_once(self._accept, script_keys, args)
        if reply is None:
            return AcceptOutcome.SENT, ""
        return AcceptOutcome(reply[0]), str(reply[1]) if len(reply) > 1 else ""

    def _send_once(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` once on one connection: its reply, or None if the command went out
        whole but no reply came. Raises if it did not go out (Redis drops a partial one)."""
        pool = self.redis.connection_pool
        connection: Any = pool.get_connection()
        try:
            for command in (("EVALSHA", script.sha), ("EVAL", script.script)):
                try:
                    connection.send_command(*command, len(keys), *keys, *args)
                except redis.RedisError:
                    connection.disconnect()
                    raise
                try:
                    return connection.read_response()
                except NoScriptError:
                    continue  # not cached (a restart, SCRIPT FLUSH): send the script itself
                except (redis.ConnectionError, redis.TimeoutError):
                    connection.disconnect()
                    return None
            raise NoScriptError("the script was not loaded")
        finally:
            pool.release(connection)

    def _each(self, script: Script, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per (keys, args): directly for one call, else in one pipeline.

        Not a pipeline of one: a pipeline holding a script first asks Redis whether it has
        the script, a round trip more than the call itself.
        """
        if len(calls) == 1:
            script_keys, args = calls[0]
            return [script(keys=script_keys, args=args)]
        pipe = self.redis.pipeline(transaction=False)
        for script_keys, args in calls:
            script(keys=script_keys, args=args, client=pipe)
        return list(pipe.execute())

    def _unless_transcripts_kept(self, fields: dict[str, Any], tenant: str) -> None:
        """Flag the run of a tenant whose transcripts must not outlive their runs, for the
        script that ends it; and drop its cache_ttl: the LLM cache would keep its answers past
        its end (the intake refuses a stream or a thread, which would keep its tokens or its
        history)."""
        if not self.settings.tenants.keeps_transcripts(tenant):
            fields.pop("cache_ttl", None)
            fields[keys.NO_TRANSCRIPT_FIELD] = 1

    def _run_fields(
        self,
        run_id: str,
        request: RunRequest,
        tools: list[str],
        chain: list[Target],
        tenant: str,
        batch_id: str | None,
    ) -> tuple[dict[str, Any], list[str]]:
        now = time.time()
        fields: dict[str, Any] = {
            "id": run_id,
            "tenant": tenant,
            "cap": self.settings.tenants.tenant_cap(tenant),
            "status": RunStatus.QUEUED.value,
            "model": request.model or chain[0].model,
            "chain": json.dumps([[t.provider, t.model] for t in chain]),
            "max_steps": request.max_steps or self.settings.runs.default_max_steps,
            "tools": json.dumps(tools),
            "metadata": json.dumps(request.metadata),
            "stream": int(request.stream),
            "created_at": now,
            "updated_at": now,
            "step": 0,
            "applied_step": 0,
            "dispatched_step": 0,
            "tools_total": 0,
            "tools_done": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "llm_calls": 0,
        }
        if batch_id:
            fields["batch_id"] = batch_id
        if trace := tracing.traceparent():
            # The trace the run is created in (its request's), kept for what is sent for the
            # run outside its own spans (agentfleet.tasks.tracing).
            fields["traceparent"] = trace
        # Written only when given: a plain run's record is what it always was.
        if request.agent:
            fields["agent"] = request.agent
        if request.model_settings is not None and (body := request.model_settings.body()):
            fields["model_settings"] = json.dumps(body)
        if request.output_schema is not None:
            fields["output_schema"] = json.dumps(request.output_schema)
        fields |= _optional_fields(request)
        if request.approval_required:
            fields["approval_required"] = json.dumps(request.approval_required)
        if request.subagents:
            fields["subagents"] = json.dumps(request.subagents)
        if request.handoffs:
            fields["handoffs"] = json.dumps(request.handoffs)
        self._unless_transcripts_kept(fields, tenant)
        if request.thread_id:
            # The thread's history goes in front of the input when the run's turn comes
            # (begin_step.lua), after ``head`` messages (the system prompt, if any).
            fields |= {
                "thread_id": request.thread_id,
                "thread_policy": request.thread_policy or "enqueue",
                "thread_history": request.thread_history or "messages",
                "head": 1 if request.system else 0,
                "thread_ttl": self.settings.retention.thread_ttl,
                "thread_max_turns": self.settings.retention.thread_max_turns,
            }
        if request.callback_url:
            fields["callback_url"] = str(request.callback_url)
        messages = []
        if request.system:
            messages.append(json.dumps({"role": "system", "content": request.system}))
        # An agent's object input was rendered as text when the run was admitted.
        messages.append(json.dumps({"role": "user", "content": str(request.input)}))
        return fields, messages

    def event(self, run_id: str, kind: str, data: dict[str, Any], client: Any = None) -> None:
        """Append an event the scripts do not make (bounded like theirs); ``client``: a
        pipeline to queue it on."""
        (self.redis if client is None else client).xadd(
            keys.run_events(self._p, run_id),
            {"type": kind, "data": json.dumps(data)},
            maxlen=self.settings.retention.events_max_len,
            approximate=True,
        )

    def delete_run(self, run_id: str) -> None:
        self.delete_records([run_id], [])

    def delete_records(self, run_ids: Sequence[str], call_ids: Sequence[str]) -> None:
        """Delete runs and tool calls, in one pipelined round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.delete(
                self.run_key(run_id),
                keys.run_messages(self._p, run_id),
                keys.run_events(self._p, run_id),
            )
            pipe.zrem(self.active_key, run_id)
        for call_id in call_ids:
            pipe.delete(self.tool_key(call_id))
        pipe.execute()

    def get_run(self, run_id: str) -> RunRecord | None:
        data = cast(dict[str, str], self.redis.hgetall(self.run_key(run_id)))
        return RunRecord.parse(data) if data else None

    def messages(self, run_id: str) -> list[dict[str, Any]]:
        raw = cast(list[str], self.redis.lrange(keys.run_messages(self._p, run_id), 0, -1))
        return [json.loads(m) for m in raw]

    def begin_step(self, run_id: str, step: int, worker: str = "") -> StepClaim:
        token = uuid.uuid4().hex
        lease_ms = int(self.settings.limits.step_time_limit * 1000)
        reply = self._begin_step(
            keys=[self.run_key(run_id), self._lease(run_id), self._messages(run_id)],
            args=[
                self._ctx(run_id),
                token,
                step,
                lease_ms,
                self.settings.limits.max_redeliveries,
                self.due(self.settings.limits.step_time_limit),
                worker,
            ],
        )
        outcome = StepOutcome(reply[0])
        if outcome == StepOutcome.OK:
            record = RunRecord.parse(_pairs(reply[1]))
            return StepClaim(outcome, token, record, [json.loads(m) for m in reply[2]])
        waits = (StepOutcome.BUSY, StepOutcome.PENDING)
        wait_s = int(reply[1]) / 1000 if outcome in waits else 0.0
        return StepClaim(outcome, token, None, [], wait_s=max(wait_s, 0.0))

    def apply_step(self, run_id: str, step: int, token: str, answer: StepAnswer) -> int:
        """Append this step's answer and usage once, as generation ``token``, then drop the
        lease ``token`` holds (unless the run is final): 1 applied now, 0 applied before, -1
        the run is final (cancelled while the model answered). :class:`RolledBack` if the
        answer it builds on (``answer.after``) is gone."""
        applied = int(
            self._apply_step(
                keys=[self.run_key(run_id), self._messages(run_id), self._lease(run_id)],
                args=[self._ctx(run_id), step, answer.payload(), token],
            )
        )
        if applied == ROLLED_BACK:
            raise RolledBack(f"the answer step {step} of run {run_id} builds on is gone")
        return applied

    def finish_step(
        self,
        run_id: str,
        step: int,
        token: str,
        *,
        status: RunStatus | None = None,
        result: str | None = None,
        error: dict[str, str] | None = None,
        gen: str | None = None,
        release: bool = False,
    ) -> Finished:
        """Mark the step dispatched (and the run final, if ``status``); drop the lease.

        ``gen``: the generation of the step's answer whose tool calls were dispatched, or that
        ends the run; :class:`RolledBack` if the step's applied answer is not that one.
        ``release``: the step started child runs, so the run frees its tenant slot while they
        run (its next step takes one again); ``kick`` is the run that now has it.
        """
        payload = self._finish_payload(status, result, error, gen, release=release)
        reply = self._finish_step(
            keys=[self.run_key(run_id), self._lease(run_id)],
            args=[self._ctx(run_id), token, step, payload],
        )
        if reply[0] == "rolled_back":
            raise RolledBack(f"the answer of step {step} of run {run_id} is gone")
        return _finished(_pairs(reply[0]), *reply[1:4])

    def apply_and_finish_step(
        self,
        run_id: str,
        step: int,
        token: str,
        answer: StepAnswer,
        *,
        status: RunStatus,
        result: str | None = None,
        error: dict[str, str] | None = None,
    ) -> Finished | None:
        """:meth:`apply_step`, then :meth:`finish_step` with the run final, in one round trip;
        None if the run was final already (cancelled while the model answered)."""
        reply = self._apply_and_finish_step(
            keys=[self.run_key(run_id), self._messages(run_id), self._lease(run_id)],
            args=[
                self._ctx(run_id),
                token,
                step,
                answer.payload(),
                self._finish_payload(status, result, error),
            ],
        )
        if int(reply[0]) == ROLLED_BACK:
            raise RolledBack(f"the answer step {step} of run {run_id} builds on is gone")
        if int(reply[0]) < 0:
            return None
        return _finished(_pairs(reply[1]), *reply[2:5])

    def _finish_payload(
        self,
        status: RunStatus | None,
        result: str | None,
        error: dict[str, str] | None,
        gen: str | None = None,
        *,
        release: bool = False,
    ) -> str:
        # Not final: its tool calls are queued, and each one pushes this on as it starts.
        payload: dict[str, Any] = {"due": self.due(self.settings.limits.tool_time_limit)}
        if gen:
            payload["gen"] = gen
        if release:
            payload["release"] = True
        if status is not None:
            payload["status"] = status.value
        if result is not None:
            payload["result"] = result
        if error is not None:
            payload["error"] = json.dumps(error)
        return json.dumps(payload)

    def cancel_run(self, run_id: str, reason: str) -> tuple[str, Finished | None]:
        """Cancel a run unless it is final: (``cancelled`` | ``final:<status>`` | ``missing``,
        what to start because of it: None unless it was cancelled now)."""
        return self.cancel_runs([run_id], reason)[0]

    def cancel_runs(self, run_ids: Sequence[str], reason: str) -> list[tuple[str, Finished | None]]:
        """:meth:`cancel_run` for many runs, in two pipelined round trips."""
        replies = self._each(
            self._cancel_run, [([self.run_key(r)], [self._ctx(r), reason]) for r in run_ids]
        )
        pipe = self.redis.pipeline(transaction=False)
        cancelled = [
            r for r, reply in zip(run_ids, replies, strict=True) if reply[0] == "cancelled"
        ]
        for run_id in cancelled:
            pipe.hgetall(self.run_key(run_id))
        records = dict(zip(cancelled, cast(list[dict[str, str]], pipe.execute()), strict=True))
        return [
            (reply[0], _finished(records[run_id], *reply[1:5]) if records.get(run_id) else None)
            for run_id, reply in zip(run_ids, replies, strict=True)
        ]

    def wait_step(
        self,
        run_id: str,
        step: int,
        token: str,
        answer: StepAnswer,
        waiting: dict[str, Any],
        deadline: float | None,
    ) -> tuple[int, str]:
        """Apply the step's answer and make the run wait for a person (``waiting``: see
        ``wait_step.lua``) until ``deadline`` (None: no timeout): (what :meth:`apply_step`
        answers, the run that now has the tenant slot it held, or '')."""
        reply = self._wait_step(
            keys=[self.run_key(run_id), self._messages(run_id), self._lease(run_id)],
            args=[
                self._ctx(run_id),
                step,
                answer.payload(),
                token,
                json.dumps(waiting),
                "" if deadline is None else deadline,
            ],
        )
        if int(reply[0]) == ROLLED_BACK:
            raise RolledBack(f"the answer step {step} of run {run_id} builds on is gone")
        return int(reply[0]), str(reply[1])

    def decide(self, run_id: str, kind: str, decisions: list[dict[str, Any]]) -> list[Any]:
        """Record decisions on the calls a waiting run waits for (``decide.lua``): its reply."""
        call_keys = [self.tool_key(d["id"]) for d in decisions]
        return list(
            self._decide(
                keys=[self.run_key(run_id), *call_keys],
                args=[self._ctx(run_id), kind, json.dumps(decisions), self.due(0)],
            )
        )

    def set_waiting(self, run_id: str, waiting: dict[str, Any]) -> float:
        """Record why the run is waiting, on its record and as an ``llm_wait`` event (of the
        step in flight: the one whose ``llm_call_started`` came last); returns since when it
        has been waiting."""
        key = self.run_key(run_id)
        pipe = self.redis.pipeline()
        pipe.hsetnx(key, "waiting_since", time.time())
        pipe.hset(key, "waiting", json.dumps(waiting))
        self.event(run_id, "llm_wait", waiting, client=pipe)
        pipe.hget(key, "waiting_since")
        return float(pipe.execute()[-1])

    def release_step(
        self, run_id: str, step: int, token: str, after: float = 0.0, due: float | None = None
    ) -> None:
        """Give the step back; its retry comes ``after`` seconds from now. The run is due
        ``due`` (a time), by default once that retry has had its time."""
        if due is None:
            due = self.due(after + self.settings.limits.step_time_limit)
        self._release_step(
            keys=[self.run_key(run_id), self._lease(run_id)],
            args=[self._ctx(run_id), token, step, due],
        )

    def touch(self, run_id: str, seconds: float) -> None:
        """Push the run's due time to ``seconds`` (plus the stall allowance) from now."""
        self.redis.zadd(self.active_key, {run_id: self.due(seconds)}, xx=True)

    def overdue(self, limit: int) -> list[str]:
        """Unfinished runs whose progress is overdue, most overdue first."""
        found = self.redis.zrangebyscore(self.active_key, "-inf", time.time(), 0, limit)
        return cast(list[str], found)

    def forget(self, run_id: str) -> None:
        self.redis.zrem(self.active_key, run_id)

    def waits_for_slot(self, run: RunRecord) -> bool:
        """Whether ``run`` waits in its tenant's queue while the tenant has no free slot, or
        for its turn on its thread.

        Then the run that frees a slot (or ends its turn) starts it; a run that waits while a
        slot is free lost that message, and needs it sent again.
        """
        if run.thread_id and run.status == RunStatus.QUEUED:
            queue = keys.thread_queue(self._p, run.tenant, run.thread_id)
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrange(queue, 0, 0)
            pipe.zscore(queue, run.id)
            first, position = pipe.execute()
            if position is not None and first and first[0] != run.id:
                return True
        tenant, cap = run.tenant, run.cap
        # A run takes a slot when it starts, and again when it goes on after a person decided.
        takes_slot = run.status == RunStatus.QUEUED or "needs_slot" in run.fields
        if not tenant or cap <= 0 or not takes_slot:
            return False
        pipe = self.redis.pipeline(transaction=False)
        pipe.zscore(keys.tenant_waiting(self._p, tenant), run.id)
        pipe.scard(keys.tenant_inflight(self._p, tenant))
        waiting, inflight = pipe.execute()
        return waiting is not None and int(inflight) >= cap

    def holds_lease(self, run_id: str) -> bool:
        """Whether a worker holds the run's step (a live one, or a dead one until it expires)."""
        return bool(self.redis.exists(self._lease(run_id)))

    def drop_lease(self, run_id: str, token: str) -> None:
        """Let the next step of the run start (it may arrive before this one has finished)."""
        self._drop_lease(keys=[self._lease(run_id)], args=[token])

    # --- tool calls ----------------------------------------------------------------------
    def create_tool_call(
        self,
        call_id: str,
        name: str,
        arguments: dict[str, Any],
        *,
        tenant: str = "default",
        batch_id: str | None = None,
        client: Any = None,
        pending: str = "",
    ) -> int:
        """1 created, 0 the ID exists, -1 it exists but another request is accepting it.
        ``pending``: as for :meth:`create_run`; the call's messages carry the token. With
        ``client`` (a pipeline) the reply is among the pipeline's, and this returns 0."""
        fields: dict[str, Any] = {
            "id": call_id,
            "tenant": tenant,
            "name": name,
            "arguments": json.dumps(arguments),
            "status": ToolCallStatus.QUEUED.value,
            "created_at": time.time(),
        }
        if batch_id:
            fields["batch_id"] = batch_id
        if pending:
            fields["pending"] = fields["accept"] = pending
        created = self._create_tool(
            keys=[self.tool_key(call_id)],
            args=[self._ctx(None), json.dumps(fields), self.pending_ms() if pending else 0],
            client=client or self.redis,
        )
        return 0 if client is not None else int(created)

    def cancel_tool_calls(self, call_ids: Sequence[str], reason: str) -> list[tuple[str, str]]:
        """Cancel standalone calls not yet started, pipelined: (outcome, finished batch or '')
        per call."""
        pipe = self.redis.pipeline(transaction=False)
        for call_id in call_ids:
            self._cancel_tool(
                keys=[self.tool_key(call_id)], args=[self._ctx(None), reason], client=pipe
            )
        return [(reply[0], reply[1]) for reply in pipe.execute()]

    def get_tool_call(self, call_id: str) -> ToolCallRecord | None:
        data = cast(dict[str, str], self.redis.hgetall(self.tool_key(call_id)))
        return parse_tool_call(call_id, data)

    def get_tool_calls(self, call_ids: list[str]) -> list[ToolCallRecord | None]:
        """:meth:`get_tool_call` of each of ``call_ids``, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for call_id in call_ids:
            pipe.hgetall(self.tool_key(call_id))
        found = cast(list[dict[str, str]], pipe.execute())
        return [parse_tool_call(i, data) for i, data in zip(call_ids, found, strict=True)]

    def unheld_tool_attempts(self, call_ids: list[str]) -> list[int | None]:
        """How many deliveries began each call, or None while a worker holds it (a live one,
        or a dead one until its lease expires)."""
        pipe = self.redis.pipeline(transaction=False)
        for call_id in call_ids:
            pipe.exists(keys.tool_lease(self._p, call_id))
            pipe.hget(self.tool_key(call_id), "attempts")
        replies = pipe.execute()
        return [
            None if held else int(begun or 0)
            for held, begun in zip(replies[::2], replies[1::2], strict=True)
        ]

    def stored_tool_results(self, call_ids: list[str]) -> list[dict[str, Any] | None]:
        """The stored result of each of ``call_ids``, None where there is none yet."""
        pipe = self.redis.pipeline(transaction=False)
        for call_id in call_ids:
            pipe.hget(self.tool_key(call_id), "result")
        return [None if r is None else json.loads(r) for r in pipe.execute()]

    def dispatched_results(self, run: RunRecord) -> list[dict[str, Any] | None]:
        """The stored result of each tool call of the run's last dispatched step, None where
        there is none yet, or only one for an answer a crash of Redis rolled back (its call
        runs again, and replaces it)."""
        step, gen = run.dispatched_step, run.gen(run.dispatched_step)
        call_ids = [keys.tool_call_id(run.id, step, i) for i in range(run.tool_calls(step))]
        results = self.stored_tool_results(call_ids)
        return [r if r is None or r.get("gen", gen) == gen else None for r in results]

    def tool_results(self, call_ids: list[str]) -> list[dict[str, Any]] | None:
        """The stored results of ``call_ids`` in order, or None while any is missing."""
        results = self.stored_tool_results(call_ids)
        if any(r is None for r in results):
            return None
        return cast(list[dict[str, Any]], results)

    def begin_tool(
        self,
        call_id: str,
        name: str,
        arguments: str,
        run_id: str | None,
        lease_s: float,
        step: int = 0,
        accept: str = "",
        gen: str = "",
    ) -> ToolClaim:
        """Take the call to run it, unless its result is stored. ``accept``: the acceptance
        token its message carries; ``gen``: the generation of the run's answer that asked for
        the call, whose stored result of another generation is replaced."""
        token = uuid.uuid4().hex
        key = self.tool_key(call_id)
        run_key = self.run_key(run_id) if run_id else keys.tool_no_run(self._p, call_id)
        reply = self._begin_tool(
            keys=[key, keys.tool_lease(self._p, call_id), run_key],
            args=[
                self._ctx(run_id),
                token,
                int(lease_s * 1000),
                name,
                arguments,
                self.due(lease_s),
                step,
                call_id,
                self.settings.limits.max_redeliveries,
                accept,
                gen,
            ],
        )
        outcome = ToolOutcome(reply[0])
        if outcome == ToolOutcome.DONE:
            return ToolClaim(outcome, token, result=json.loads(reply[1]))
        if outcome in (ToolOutcome.BUSY, ToolOutcome.PENDING):
            return ToolClaim(outcome, token, wait_s=max(int(reply[1]) / 1000, 0.0))
        if outcome == ToolOutcome.OK:
            return ToolClaim(outcome, token, tenant=str(reply[1]))
        return ToolClaim(outcome, token)

    def cached_tool_result(self, key: str) -> dict[str, Any] | None:
        """The result kept in the tool-cache entry ``key``, or None."""
        stored = self.redis.get(key)
        return None if stored is None else cast(dict[str, Any], json.loads(stored))

    def complete_tool(
        self,
        call_id: str,
        token: str,
        result: dict[str, Any],
        run_id: str | None,
        step: int = 0,
        status: ToolCallStatus | None = None,
        cache: CacheUse | None = None,
    ) -> tuple[dict[str, Any] | None, str]:
        """Store the result unless one is stored: (the result that won, finished batch).
        Drops the lease if ``token`` still holds it (``""`` holds none).

        ``cache``: how the call used its tool's cache, counted if the result is stored; a
        miss's successful result is kept in the cache by the same script, so an entry never
        outlives a result that was not stored.

        (None, '') if the run's step holds an answer of another generation than ``result``'s
        ``gen``: a crash of Redis rolled back the answer that asked for the call.
        """
        key = self.tool_key(call_id)
        run_key = self.run_key(run_id) if run_id else keys.tool_no_run(self._p, call_id)
        if status is None:
            status = ToolCallStatus.SUCCEEDED if result.get("ok") else ToolCallStatus.FAILED
        script_keys = [key, keys.tool_lease(self._p, call_id), run_key, self._metrics.tool_cache]
        outcome = field = ""
        ttl_ms = 0
        if cache is not None:
            outcome = "hit" if cache.hit else "miss"
            field = label_field(cache.tool, outcome)
            if not cache.hit and result.get("ok"):
                script_keys.append(cache.key)
                ttl_ms = cache.ttl_ms
        stored, batch = self._complete_tool(
            keys=script_keys,
            args=[
                self._ctx(run_id),
                token,
                json.dumps(result),
                status.value,
                self.due(0),
                step,
                result.get("gen") or "",
                outcome,
                field,
                ttl_ms,
            ],
        )
        if not stored:
            return None, ""
        return cast(dict[str, Any], json.loads(stored)), batch


#: Fields of a run request kept on its record as they are, when the request sets them.
_OPTIONAL_FIELDS = (
    "context_budget",
    "context_summary",
    "cache_ttl",
    "max_total_tokens",
    "max_cost",
    "budget_policy",
    "wait_timeout",
    "on_wait_timeout",
    "wait_default",
)


def _optional_fields(request: RunRequest) -> dict[str, Any]:
    """The request's optional limits and policies that are set (``repr``: floats exactly)."""
    found = {name: getattr(request, name) for name in _OPTIONAL_FIELDS}
    return {
        k: v if isinstance(v, str) else repr(int(v) if isinstance(v, bool) else v)
        for k, v in found.items()
        if v is not None
    }
