"""``agentfleet.tool.call``: run one tool once, and always answer with a structured result."""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import redis
from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery, Task
from celery.exceptions import Ignore
from pydantic import BaseModel

from agentfleet.tasks import keys, names
from agentfleet.tasks.errors import (
    ToolError,
    ToolExecutionError,
    ToolRedeliveryLimit,
    UnknownToolError,
)
from agentfleet.tasks.lifecycle import batch_finished, pending_countdown
from agentfleet.tasks.models import DEFAULT_TENANT
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.states import ToolCallStatus, ToolOutcome
from agentfleet.tasks.store import CacheUse, RunStore, ToolClaim, get_store
from agentfleet.tasks.tools import Tool, registry

log = logging.getLogger(__name__)


def tool_payload(
    call_id: str,
    name: str,
    arguments: str | dict[str, Any],
    *,
    run_id: str | None = None,
    step: int | None = None,
    model_call_id: str | None = None,
    allowed: list[str] | None = None,
    accept: str | None = None,
    gen: str | None = None,
) -> dict[str, Any]:
    """The JSON payload of ``agentfleet.tool.call`` (version 1). ``accept``: the token of
    the API's record of the call, which must be accepted before the call runs; ``gen``: the
    generation of the run's answer that asked for the call (see :mod:`agentfleet.tasks.scripts`)."""
    payload: dict[str, Any] = {"version": 1, "id": call_id, "name": name, "arguments": arguments}
    if run_id is not None:
        payload["run_id"] = run_id
    if step is not None:
        payload["step"] = step
    if model_call_id is not None:
        payload["model_call_id"] = model_call_id
    if allowed is not None:
        payload["allowed"] = allowed
    if accept is not None:
        payload["accept"] = accept
    if gen:
        payload["gen"] = gen
    return payload


def _either(request: dict[str, Any] | None, payload: dict[str, Any] | None) -> dict[str, Any]:
    if request is not None:
        return request
    if payload is None:
        # What Python says of a missing argument, naming the keyword to send.
        raise TypeError("agentfleet.tool.call needs its call: kwargs={'request': {...}}")
    return payload


def redelivery_failure(payload: dict[str, Any], limit: int) -> dict[str, Any]:
    """The result stored for a call that lost its worker on each of its ``limit`` deliveries
    (a tool that ends or crashes its own process would do so forever)."""
    error = ToolRedeliveryLimit(
        f"tool {payload['name']!r} was begun {limit} times and its worker was lost each "
        "time; it is not run again"
    )
    return _result_head(payload) | {"ok": False, "error": error.to_dict()}


def _result_head(payload: dict[str, Any]) -> dict[str, Any]:
    """The fields every result of the call in ``payload`` starts with."""
    head: dict[str, Any] = {"id": str(payload["id"]), "name": str(payload["name"])}
    if payload.get("model_call_id"):
        head["model_call_id"] = payload["model_call_id"]
    if payload.get("gen"):
        head["gen"] = payload["gen"]  # the next step checks it answers the run's current answer
    return head


_T = TypeVar("_T")


def _guarded(name: str, work: Callable[[], _T]) -> _T:
    """``work()``, the tool's own code (its validators, its function): what it raises becomes
    a :class:`~agentfleet.tasks.errors.ToolError`, reported, never crashing the worker."""
    try:
        return work()
    except ToolError:
        raise
    except SoftTimeLimitExceeded:
        raise ToolExecutionError(f"tool {name!r} timed out") from None
    except Exception as exc:
        raise ToolExecutionError(f"tool {name!r} raised {type(exc).__name__}: {exc}") from None


def prepare(
    name: str, arguments: str | dict[str, Any], allowed: list[str] | None
) -> tuple[Tool, BaseModel]:
    """The tool ``name`` and its validated arguments; raises only
    :class:`~agentfleet.tasks.errors.ToolError` subclasses."""
    if allowed is not None and name not in allowed:
        raise UnknownToolError(f"tool {name!r} is not available to this run")
    tool = registry.get(name)
    return tool, _guarded(name, lambda: tool.validate(arguments))


def _call_tenant(claim: ToolClaim, run_id: str | None) -> str:
    """The tenant whose cache entries a call may use ('' for none)."""
    if claim.tenant:
        return claim.tenant
    # A standalone call whose record names no tenant was sent without the API (send_task):
    # it is the default tenant's, as runs sent so are. A run's call of a run that is gone
    # has no known tenant, and uses no cache.
    return "" if run_id else DEFAULT_TENANT


def cache_key(prefix: str, tenant: str, tool: Tool, model: BaseModel) -> str:
    """The cache entry of ``tool`` called by ``tenant`` with the validated arguments ``model``:
    a tool whose schema changed (its ``schema_hash``) has entries of its own."""
    return keys.tool_cache(
        prefix, tenant, tool.name, tool.schema_hash, tool.arguments_digest(model)
    )


def _look_up(
    store: RunStore, tool: Tool, model: BaseModel, tenant: str
) -> tuple[CacheUse | None, dict[str, Any] | None]:
    """(how the call uses its tool's cache, the result kept there): (None, None) for a tool
    without ``cache_ttl``, a call without a tenant, or one of a tenant whose transcripts must
    not outlive their runs (an entry would keep the result)."""
    if tool.cache_ttl is None or not tenant or not store.settings.tenants.keeps_transcripts(tenant):
        return None, None
    key = cache_key(store.settings.redis.key_prefix, tenant, tool, model)
    try:
        kept = store.cached_tool_result(key)
    except redis.RedisError as exc:  # a cache never fails a call: run it instead
        log.warning("tool cache of %s: lookup failed, running the call: %s", tool.name, exc)
        return None, None
    # PX takes whole milliseconds, at least one.
    use = CacheUse(key, kept is not None, max(1, math.ceil(tool.cache_ttl * 1000)), tool.name)
    return use, kept


def _answer(
    store: RunStore, payload: dict[str, Any], tenant: str
) -> tuple[dict[str, Any], CacheUse | None]:
    """Run the call in ``payload``, or take its tool's cached result: (the result's fields
    after its head, how the cache was used). Never raises a tool's error: it is the result.

    Two identical calls at once may both run (both miss, the first result stored is kept):
    waiting for the other would hold a prefork tool worker idle.
    """
    name = str(payload["name"])
    cache = None
    try:
        tool, model = prepare(name, payload.get("arguments") or {}, payload.get("allowed"))
        cache, kept = _look_up(store, tool, model, tenant)
        if kept is not None:
            return {"ok": True, "output": kept.get("output"), "cached": True}, cache
        return {"ok": True, "output": _guarded(name, lambda: tool.call(model))}, cache
    except ToolError as exc:
        log.info("tool call %s (%s) failed: %s", payload["id"], name, exc)
        return {"ok": False, "error": exc.to_dict()}, cache


def time_limits(name: str, settings: Settings) -> tuple[float, float]:
    """(soft, hard) seconds for one call of ``name``: its own timeout, else the default."""
    soft = settings.limits.tool_soft_time_limit
    if name in registry and (own := registry.get(name).timeout):
        soft = own
    return soft, soft + (settings.limits.tool_time_limit - settings.limits.tool_soft_time_limit)


def register(app: Celery, settings: Settings) -> None:
    """Register the tool-call task on ``app``."""

    # No STARTED state in the result backend: the tool-call record says ``running`` (what
    # GET /v1/tool-calls/{id} shows) and task events tell Flower; Celery's own write would
    # be a read, a write and a publish more per call. A run's calls store no result either
    # (ignore_result), but their failures, which only a kill at the hard time limit makes,
    # are stored: the errback of a run's single call reads the cause there.
    @app.task(
        name=names.TOOL_CALL,
        bind=True,
        shared=False,
        track_started=False,
        store_errors_even_if_ignored=True,
        max_retries=None,
        soft_time_limit=settings.limits.tool_soft_time_limit,
        time_limit=settings.limits.tool_time_limit,
    )
    def tool_call(
        self: Task,
        request: dict[str, Any] | None = None,
        payload: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run the call ``request`` (:func:`tool_payload`): ``request`` is the keyword of both
        entry tasks for ``send_task`` callers; ``payload`` is its former name, still taken."""
        payload = _either(request, payload)
        store = get_store(settings)
        call_id, name = str(payload["id"]), str(payload["name"])
        arguments = payload.get("arguments") or {}
        run_id = payload.get("run_id")
        raw_args = arguments if isinstance(arguments, str) else json.dumps(arguments)
        _, hard = time_limits(name, settings)
        step = int(payload.get("step") or 0)
        accept = str(payload.get("accept") or "")
        gen = str(payload.get("gen") or "")
        claim = store.begin_tool(
            call_id, name, raw_args, run_id, lease_s=hard, step=step, accept=accept, gen=gen
        )
        _stop_unless_ours(self, claim, call_id, run_id)
        if claim.outcome == ToolOutcome.DONE:
            assert claim.result is not None
            if self.request.chord and run_id:
                # Delivered again after it completed: the worker that ran it died while
                # finishing, perhaps holding the chord's dispatch claim (Celery keeps it
                # ~21 s, and a report arriving meanwhile publishes nothing). Check again
                # once that claim has lapsed.
                self.app.send_task(
                    names.RESUME,
                    args=(run_id, step, self.request.chord),
                    countdown=settings.limits.chord_recovery_delay,
                )
            return claim.result
        if claim.outcome == ToolOutcome.POISONED:
            log.warning("tool call %s (%s) lost its worker on each delivery", call_id, name)
            failure = redelivery_failure(payload, settings.limits.max_redeliveries)
            stored, batch = store.complete_tool(call_id, claim.token, failure, run_id, step)
            if stored is None:
                _ignore_stale(call_id, run_id)
            batch_finished(self.app, batch)
            return stored
        result = _result_head(payload)
        status: ToolCallStatus | None = None
        cache: CacheUse | None = None
        if claim.outcome == ToolOutcome.CANCELLED:
            # Its run was cancelled: answer without running, so the chord still completes.
            result |= {"ok": False, "error": {"code": "cancelled", "message": "run cancelled"}}
            status = ToolCallStatus.CANCELLED
        else:
            answer, cache = _answer(store, payload, _call_tenant(claim, run_id))
            result |= answer
        stored, batch = store.complete_tool(
            call_id, claim.token, result, run_id, step, status, cache
        )
        if stored is None:
            _ignore_stale(call_id, run_id)
        batch_finished(self.app, batch)
        return stored


def _stop_unless_ours(task: Task, claim: ToolClaim, call_id: str, run_id: str | None) -> None:
    """End the task (retry later, or ignore) unless ``claim`` lets it answer the call."""
    if claim.outcome == ToolOutcome.PENDING:
        raise task.retry(countdown=pending_countdown(claim.wait_s, task.request.retries))
    if claim.outcome == ToolOutcome.BUSY:
        # Another worker holds the call (or died holding it): wait for the lease to end.
        raise task.retry(countdown=claim.wait_s + random.uniform(0.1, 0.5))
    if claim.outcome == ToolOutcome.REFUSED:
        log.info("tool call %s was never accepted: not run", call_id)
        raise Ignore()
    if claim.outcome == ToolOutcome.STALE:
        _ignore_stale(call_id, run_id)


def _ignore_stale(call_id: str, run_id: str | None) -> NoReturn:
    """End a call that its run's step no longer asks for, passing nothing on: its chord or
    chain belongs to an answer that a crash of Redis rolled back, and must not go on."""
    log.warning(
        "tool call %s: run %s holds another answer than the one that asked for it (a crash of "
        "Redis rolled that one back); ignored",
        call_id,
        run_id,
    )
    raise Ignore()
