"""Runs that wait for a person: tool calls that need approval, and questions to a person.

A step whose answer calls a tool that needs approval (the tool says so, ``@tool(
requires_approval=True)``, or the run lists it in ``approval_required``) or asks a person a
question (the built-in tool ``ask_human``) does not dispatch its tool calls. It applies its
answer and the run becomes ``waiting`` (``wait_step.lua``), with the pending calls in its
``waiting`` field. A waiting run holds no worker, no message, no lease and no tenant slot, and
is due in the watchdog's worklist only at its wait's deadline, if it has one.

Decisions are recorded by ``decide.lua``, all or nothing. A denied call and an answered
question get their results stored there, as their tool task would store them. Once every
pending call is decided the run is ``running`` again and its step is published again: it finds
its answer applied and dispatches the answer's tool calls as any redelivered step does. The
tool tasks of denied and answered calls find their results stored and hand them over without
running anything, so the next step gets every result in the order the model asked; an approved
call runs, with the reviewer's arguments if they edited them (:func:`edited_arguments`).
Nothing waits in memory: a restart of every worker, or of Redis with its append-only file,
finds the run as it was.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from agentfleet.tasks import keys, names
from agentfleet.tasks.errors import InvalidRequest, NotWaiting, RunNotFound, ToolArgumentsError
from agentfleet.tasks.lifecycle import start_run
from agentfleet.tasks.llm import ModelToolCall
from agentfleet.tasks.models import ApprovalsRequest, InputRequest
from agentfleet.tasks.records import RunRecord
from agentfleet.tasks.states import RunStatus
from agentfleet.tasks.store import RunStore
from agentfleet.tasks.tools import registry

log = logging.getLogger(__name__)

#: The built-in tool through which a model asks a person (agentfleet.tasks.tools.builtin).
ASK_HUMAN = "ask_human"
#: What a pending call waits for.
APPROVAL, INPUT = "approval", "input"


def needs_approval(run: RunRecord, name: str) -> bool:
    """Whether a call of tool ``name`` in ``run`` waits for a reviewer."""
    required = run.approval_required
    if "*" in required or name in required:
        return True
    return name in registry and registry.get(name).requires_approval


def _question(arguments: str) -> str:
    """The question of an ``ask_human`` call (its arguments as the model sent them)."""
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return arguments
    return str(value.get("question", "")) if isinstance(value, dict) else str(value)


def pending_calls(run: RunRecord, step: int, calls: list[ModelToolCall]) -> list[dict[str, Any]]:
    """The calls of ``step``'s answer that wait for a person, in the model's order ([]: none)."""
    pending = []
    for index, call in enumerate(calls):
        if call.name == ASK_HUMAN:
            kind = INPUT
        elif needs_approval(run, call.name):
            kind = APPROVAL
        else:
            continue
        entry = {
            "id": keys.tool_call_id(run.id, step, index),
            "kind": kind,
            "name": call.name,
            "arguments": call.arguments,
            "model_call_id": call.id,
        }
        if kind == INPUT:
            entry["question"] = _question(call.arguments)
        pending.append(entry)
    return pending


def waiting_field(
    run: RunRecord, step: int, pending: list[dict[str, Any]]
) -> tuple[dict[str, Any], float | None]:
    """The run's ``waiting`` field while ``pending`` wait for a person, and the wait's
    deadline (a Unix time; None: it waits as long as it takes)."""
    approvals = sum(1 for c in pending if c["kind"] == APPROVAL)
    questions = len(pending) - approvals
    parts = [f"{approvals} call{'s' * (approvals != 1)} to approve"] if approvals else []
    parts += [f"{questions} question{'s' * (questions != 1)} to answer"] if questions else []
    waiting: dict[str, Any] = {
        "reason": APPROVAL if approvals else INPUT,
        "detail": " and ".join(parts),
        "step": step,
        "pending": pending,
        "timeout_at": None,
        "on_timeout": run.on_wait_timeout if run.wait_timeout else None,
    }
    if not run.wait_timeout:
        return waiting, None
    deadline = time.time() + run.wait_timeout
    waiting["timeout_at"] = datetime.fromtimestamp(deadline, UTC).isoformat(timespec="milliseconds")
    return waiting, deadline


def edited_arguments(run: RunRecord, call_id: str, arguments: str) -> str:
    """The arguments call ``call_id`` runs with: the reviewer's, if they edited them."""
    decision = run.decisions.get(call_id)
    if decision and decision.get("arguments") is not None:
        return str(decision["arguments"])
    return arguments


def _result(call: dict[str, Any], gen: str, body: dict[str, Any]) -> str:
    """A result of pending ``call`` as its tool task would return it (agentfleet.tasks.toolcall)."""
    head = {"id": call["id"], "name": call["name"], "model_call_id": call["model_call_id"]}
    if gen:
        head["gen"] = gen
    return json.dumps(head | body)


def _denied(call: dict[str, Any], gen: str, message: str) -> dict[str, Any]:
    error = {"code": "denied", "message": message}
    return {"result": _result(call, gen, {"ok": False, "error": error}), "status": "failed"}


def _answered(call: dict[str, Any], gen: str, answer: str) -> dict[str, Any]:
    return {"result": _result(call, gen, {"ok": True, "output": answer}), "status": "succeeded"}


def _waiting_run(store: RunStore, run_id: str, tenant: str | None) -> RunRecord:
    run = store.get_run(run_id)
    if run is None or (tenant is not None and run.tenant != tenant):
        raise RunNotFound(f"no run {run_id}")
    if run.status is not RunStatus.WAITING:
        raise NotWaiting(f"run {run_id} is {run.status.value}, not waiting for a person")
    return run


def _pending(run: RunRecord) -> dict[str, dict[str, Any]]:
    waiting = json.loads(run.fields.get("waiting") or "{}")
    return {c["id"]: c for c in waiting.get("pending", [])}


def approval_decisions(run: RunRecord, request: ApprovalsRequest) -> list[dict[str, Any]]:
    """``request`` as ``decide.lua`` takes it; :class:`NotWaiting` for a call the run does
    not wait to have approved, :class:`InvalidRequest` for edited arguments its tool refuses."""
    pending, gen = _pending(run), run.gen(_int(run.fields.get("waiting_step")))
    decisions, problems = [], []
    for i, d in enumerate(request.decisions):
        call = pending.get(d.call_id)
        if call is None or call["kind"] != APPROVAL:
            raise NotWaiting(f"call {d.call_id} of run {run.id} is not waiting for approval")
        if not d.approve:
            reason = "denied by the reviewer" + (f": {d.message}" if d.message else "")
            decisions.append(
                {"id": d.call_id, "decision": "deny", "message": d.message}
                | _denied(call, gen, reason)
            )
            continue
        entry: dict[str, Any] = {"id": d.call_id, "decision": "approve", "message": d.message}
        if d.arguments is not None:
            if call["name"] in registry:
                try:
                    registry.get(call["name"]).validate(d.arguments)
                except ToolArgumentsError as exc:
                    problems.append((f"decisions.{i}.arguments", exc.message))
            entry["arguments"] = json.dumps(d.arguments)
        decisions.append(entry)
    if problems:
        raise InvalidRequest.of(problems)
    return decisions


def input_decisions(run: RunRecord, request: InputRequest) -> list[dict[str, Any]]:
    """``request`` as ``decide.lua`` takes it; :class:`NotWaiting` if the run asked no such
    question, :class:`InvalidRequest` if it asked several and the answer names none."""
    questions = [c for c in _pending(run).values() if c["kind"] == INPUT]
    gen = run.gen(_int(run.fields.get("waiting_step")))
    if request.call_id is None:
        undecided = [c for c in questions if c["id"] not in run.decisions]
        if len(undecided) > 1:
            ids = ", ".join(c["id"] for c in undecided)
            raise InvalidRequest.of([("call_id", f"the run asked several questions: {ids}")])
        if not undecided:
            raise NotWaiting(f"run {run.id} waits for no answer")
        call = undecided[0]
    else:
        found = [c for c in questions if c["id"] == request.call_id]
        if not found:
            raise NotWaiting(f"call {request.call_id} of run {run.id} asks no question")
        call = found[0]
    return [{"id": call["id"], "decision": "answer"} | _answered(call, gen, request.answer)]


def timeout_decisions(run: RunRecord) -> list[dict[str, Any]]:
    """What the run's ``on_wait_timeout`` decides for the calls still pending (not ``fail``)."""
    gen = run.gen(_int(run.fields.get("waiting_step")))
    decisions = []
    for call in _pending(run).values():
        if call["id"] in run.decisions:
            continue
        if call["kind"] == INPUT and run.on_wait_timeout == "default":
            answered = _answered(call, gen, run.wait_default or "")
            decisions.append({"id": call["id"], "decision": "answer"} | answered)
            continue
        message = (
            "no reviewer decided in time" if call["kind"] == APPROVAL else "no one answered in time"
        )
        decisions.append(
            {"id": call["id"], "decision": "deny", "message": message} | _denied(call, gen, message)
        )
    return decisions


def _int(value: str | None) -> int:
    return int(value or 0)


def decide(
    app: Celery, store: RunStore, run: RunRecord, kind: str, decisions: list[dict[str, Any]]
) -> RunRecord:
    """Record ``decisions`` (of calls of ``kind``; '': any) on waiting ``run`` and, once every
    pending call is decided, publish its step again; the run's record after it.
    :class:`NotWaiting` if the script refused them (nothing recorded)."""
    reply = store.decide(run.id, kind, decisions)
    outcome = reply[0]
    if outcome == "missing":
        raise RunNotFound(f"no run {run.id}")
    if outcome == "not_waiting":
        raise NotWaiting(f"run {run.id} is {reply[1]}, not waiting for a person")
    if outcome == "not_pending":
        raise NotWaiting(f"call {reply[1]} of run {run.id} is not pending")
    if outcome == "decided":
        raise NotWaiting(f"call {reply[1]} of run {run.id} was decided already")
    if outcome == "resumed":
        log.info("run %s: every pending call decided; step %s goes on", run.id, reply[1])
        # If this publish is lost, the run is due now: the watchdog sends its step.
        start_run(app, store, run.id)
    updated = store.get_run(run.id)
    if updated is None:
        raise RunNotFound(f"no run {run.id}")
    return updated


def approve(
    app: Celery, store: RunStore, run_id: str, request: ApprovalsRequest, tenant: str | None
) -> RunRecord:
    """Decide calls a run waits to have approved (``POST /v1/runs/{id}/approvals``)."""
    run = _waiting_run(store, run_id, tenant)
    return decide(app, store, run, APPROVAL, approval_decisions(run, request))


def answer(
    app: Celery, store: RunStore, run_id: str, request: InputRequest, tenant: str | None
) -> RunRecord:
    """Answer a question a run asked (``POST /v1/runs/{id}/input``)."""
    run = _waiting_run(store, run_id, tenant)
    return decide(app, store, run, INPUT, input_decisions(run, request))


def waiting_callback(app: Celery, run: RunRecord) -> None:
    """Tell a run's callback URL that it waits for a person (only if it still does then)."""
    if run.callback_url:
        app.send_task(names.CALLBACK, args=("run", run.id, RunStatus.WAITING.value))
