"""Run and tool-call records in Redis, and the atomic transitions that make steps idempotent.

Keys (``<p>`` is ``AGENTFLEET_KEY_PREFIX``)::

    <p>:run:<id>            hash: status, step counters, usage, timestamps, result, error
    <p>:run:<id>:messages   list: the transcript, one JSON message per entry
    <p>:run:<id>:lease      string: the token of the worker applying a step (expires)
    <p>:tool:<id>           hash: name, arguments, status, result, timestamps
    <p>:tool:<id>:lease     string: the token of the worker running the tool (expires)
    <p>:runs:active         sorted set: unfinished runs, scored by the time by which their
                            next progress is due (the watchdog's worklist)

A step moves ``applied_step`` (its LLM answer is in the transcript) and then
``dispatched_step`` (its successor is enqueued, or the run is final). Each transition is one
Lua script, so a redelivered step finds out in one round trip what is left to do, and a
duplicate running alongside the original is held off by the lease. The same scripts move the
run's due time in ``<p>:runs:active``, so keeping the watchdog's worklist costs no round trip.
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

from tasks.llm._routing import Target
from tasks.metrics import Recorder
from tasks.models import RunRequest, RunStatus
from tasks.redisconn import get_redis
from workers.settings import Settings

# ARGV: fields json, ttl, due, messages...
_CREATE_RUN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = cjson.decode(ARGV[1])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
for i = 4, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], fields.id)
return 1
"""

# ARGV: token, step, lease_ms, max_deliveries, now, due, run_id
_BEGIN_STEP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  redis.call('ZREM', KEYS[4], ARGV[7])
  return {'terminal', status}
end
if tonumber(redis.call('HGET', KEYS[1], 'dispatched_step') or '0') >= tonumber(ARGV[2]) then
  return {'done'}
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[3]) then
  return {'busy', tostring(redis.call('PTTL', KEYS[2]))}
end
local n = redis.call('HINCRBY', KEYS[1], 'deliveries:' .. ARGV[2], 1)
if n > tonumber(ARGV[4]) then return {'poisoned', tostring(n)} end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[5])
end
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[7])
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[3], 0, -1)}
"""

# ARGV: step, json {messages: [str], prompt_tokens, completion_tokens, tools_total, now,
#                   provider, worker}
_APPLY_STEP = """
local step = tonumber(ARGV[1])
if tonumber(redis.call('HGET', KEYS[1], 'applied_step') or '0') >= step then return 0 end
local p = cjson.decode(ARGV[2])
for _, m in ipairs(p.messages) do redis.call('RPUSH', KEYS[2], m) end
redis.call('HINCRBY', KEYS[1], 'prompt_tokens', p.prompt_tokens)
redis.call('HINCRBY', KEYS[1], 'completion_tokens', p.completion_tokens)
redis.call('HINCRBY', KEYS[1], 'llm_calls', 1)
redis.call('HINCRBY', KEYS[1], 'tools_total', p.tools_total)
redis.call('HSET', KEYS[1], 'applied_step', step, 'step', step, 'updated_at', p.now,
           'provider', p.provider, 'tools:' .. step, p.tools_total, 'worker', p.worker)
redis.call('HDEL', KEYS[1], 'waiting', 'waiting_since')
return 1
"""

# ARGV: token, step, json {now, ttl, run_id, due, [status, result, error]}
_FINISH_STEP = """
local p = cjson.decode(ARGV[3])
local step = tonumber(ARGV[2])
if tonumber(redis.call('HGET', KEYS[1], 'dispatched_step') or '0') < step then
  redis.call('HSET', KEYS[1], 'dispatched_step', step, 'updated_at', p.now)
end
if p.status then
  local status = redis.call('HGET', KEYS[1], 'status')
  if status ~= 'succeeded' and status ~= 'failed' and status ~= 'cancelled' then
    redis.call('HSET', KEYS[1], 'status', p.status, 'finished_at', p.now)
    if p.result then redis.call('HSET', KEYS[1], 'result', p.result) end
    if p.error then redis.call('HSET', KEYS[1], 'error', p.error) end
  end
  redis.call('EXPIRE', KEYS[1], p.ttl)
  redis.call('EXPIRE', KEYS[3], p.ttl)
  redis.call('ZREM', KEYS[4], p.run_id)
else
  redis.call('ZADD', KEYS[4], 'XX', p.due, p.run_id)
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return redis.call('HGETALL', KEYS[1])
"""

# ARGV: token, step, due, run_id. Gives the step back (for a retry): not a crash, so not a
# delivery.
_RELEASE_STEP = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('HINCRBY', KEYS[1], 'deliveries:' .. ARGV[2], -1)
redis.call('ZADD', KEYS[3], 'XX', ARGV[3], ARGV[4])
return 1
"""

# ARGV: token. Drops the lease if this token still holds it.
_DROP_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# ARGV: json fields, ttl. Creates a tool-call record unless one exists.
_CREATE_TOOL = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = cjson.decode(ARGV[1])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# ARGV: token, lease_ms, now, name, arguments, run_id, due
_BEGIN_TOOL = """
local result = redis.call('HGET', KEYS[1], 'result')
if result then return {'done', result} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'busy', tostring(redis.call('PTTL', KEYS[2]))}
end
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[3])
redis.call('HSETNX', KEYS[1], 'name', ARGV[4])
redis.call('HSETNX', KEYS[1], 'arguments', ARGV[5])
if ARGV[6] ~= '' then
  redis.call('HSETNX', KEYS[1], 'run_id', ARGV[6])
  redis.call('ZADD', KEYS[3], 'XX', ARGV[7], ARGV[6])
end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return {'ok'}
"""

# ARGV: token, result json, status, now, ttl, due, run_id. First result wins; counts once on
# the run.
_COMPLETE_TOOL = """
if redis.call('HSETNX', KEYS[1], 'result', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', ARGV[4])
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HINCRBY', KEYS[3], 'tools_done', 1) end
  if ARGV[7] ~= '' then redis.call('ZADD', KEYS[4], 'XX', ARGV[6], ARGV[7]) end
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return redis.call('HGET', KEYS[1], 'result')
"""


@dataclass(frozen=True)
class StepClaim:
    """What :meth:`RunStore.begin_step` found.

    ``outcome`` is ``ok`` (the caller holds the lease), ``busy`` (another worker does; retry
    after ``wait_s``), ``done`` (already applied and dispatched), ``terminal``, ``missing``
    or ``poisoned`` (delivered more than ``max_redeliveries`` times).
    """

    outcome: str
    token: str
    run: dict[str, str]
    messages: list[dict[str, Any]]
    wait_s: float = 0.0


@dataclass(frozen=True)
class ToolClaim:
    """What :meth:`RunStore.begin_tool` found: ``ok``, ``busy`` (``wait_s``) or ``done``."""

    outcome: str
    token: str
    result: dict[str, Any] | None = None
    wait_s: float = 0.0


_stores: dict[tuple[int, int], RunStore] = {}


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def get_store(settings: Settings) -> RunStore:
    """The process's store for ``settings`` (its client is made after fork, see redisconn)."""
    key = (os.getpid(), id(settings))
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = RunStore(get_redis(settings), settings)
    return store


class RunStore:
    """Reads and writes run and tool-call records. Safe to share across threads/greenlets."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._p = settings.key_prefix
        self._create_run = client.register_script(_CREATE_RUN)
        self._begin_step = client.register_script(_BEGIN_STEP)
        self._apply_step = client.register_script(_APPLY_STEP)
        self._finish_step = client.register_script(_FINISH_STEP)
        self._release_step = client.register_script(_RELEASE_STEP)
        self._drop_lease = client.register_script(_DROP_LEASE)
        self._create_tool = client.register_script(_CREATE_TOOL)
        self._begin_tool = client.register_script(_BEGIN_TOOL)
        self._complete_tool = client.register_script(_COMPLETE_TOOL)
        self.metrics = Recorder(client, settings.key_prefix)

    # --- keys ----------------------------------------------------------------------------
    def run_key(self, run_id: str) -> str:
        return f"{self._p}:run:{run_id}"

    def tool_key(self, call_id: str) -> str:
        return f"{self._p}:tool:{call_id}"

    @property
    def active_key(self) -> str:
        return f"{self._p}:runs:active"

    def due(self, seconds: float) -> float:
        """When progress is due for a stage that may take ``seconds``: after that, plus the
        stall allowance, the watchdog takes the run for lost."""
        return time.time() + seconds + self.settings.stall_timeout

    # --- runs ----------------------------------------------------------------------------
    def create_run(
        self, run_id: str, request: RunRequest, tools: list[str], chain: list[Target]
    ) -> bool:
        """Write a queued run with its first messages. False if the ID already exists."""
        now = time.time()
        fields = {
            "id": run_id,
            "status": RunStatus.QUEUED.value,
            "model": request.model or chain[0].model,
            "chain": json.dumps([[t.provider, t.model] for t in chain]),
            "max_steps": request.max_steps or self.settings.default_max_steps,
            "tools": json.dumps(tools),
            "metadata": json.dumps(request.metadata),
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
        messages = []
        if request.system:
            messages.append(json.dumps({"role": "system", "content": request.system}))
        messages.append(json.dumps({"role": "user", "content": request.input}))
        base = self.run_key(run_id)
        created = self._create_run(
            keys=[base, f"{base}:messages", self.active_key],
            args=[json.dumps(fields), self.settings.run_ttl, self.due(0), *messages],
        )
        if created:
            self.metrics.run_enqueued()
        return bool(created)

    def delete_run(self, run_id: str) -> None:
        base = self.run_key(run_id)
        pipe = self.redis.pipeline()
        pipe.delete(base, f"{base}:messages")
        pipe.zrem(self.active_key, run_id)
        pipe.execute()

    def get_run(self, run_id: str) -> dict[str, str] | None:
        data = cast(dict[str, str], self.redis.hgetall(self.run_key(run_id)))
        return data or None

    def messages(self, run_id: str) -> list[dict[str, Any]]:
        raw = cast(list[str], self.redis.lrange(f"{self.run_key(run_id)}:messages", 0, -1))
        return [json.loads(m) for m in raw]

    def begin_step(self, run_id: str, step: int) -> StepClaim:
        token = uuid.uuid4().hex
        base = self.run_key(run_id)
        lease_ms = int(self.settings.step_time_limit * 1000)
        reply = self._begin_step(
            keys=[base, f"{base}:lease", f"{base}:messages", self.active_key],
            args=[
                token,
                step,
                lease_ms,
                self.settings.max_redeliveries,
                time.time(),
                self.due(self.settings.step_time_limit),
                run_id,
            ],
        )
        outcome = reply[0]
        if outcome == "ok":
            return StepClaim("ok", token, _pairs(reply[1]), [json.loads(m) for m in reply[2]])
        wait_s = int(reply[1]) / 1000 if outcome == "busy" else 0.0
        return StepClaim(outcome, token, {}, [], wait_s=max(wait_s, 0.0))

    def apply_step(
        self,
        run_id: str,
        step: int,
        messages: list[dict[str, Any]],
        prompt_tokens: int,
        completion_tokens: int,
        tools_total: int,
        provider: str,
        worker: str = "",
    ) -> bool:
        """Append this step's messages and usage once; False if it was applied before."""
        base = self.run_key(run_id)
        payload = {
            "messages": [json.dumps(m) for m in messages],
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "tools_total": tools_total,
            "now": time.time(),
            "provider": provider,
            "worker": worker,
        }
        applied = self._apply_step(
            keys=[base, f"{base}:messages"], args=[step, json.dumps(payload)]
        )
        return bool(applied)

    def finish_step(
        self,
        run_id: str,
        step: int,
        token: str,
        *,
        status: RunStatus | None = None,
        result: str | None = None,
        error: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """Mark the step dispatched (and the run final, if ``status``); drop the lease."""
        base = self.run_key(run_id)
        payload: dict[str, Any] = {
            "now": time.time(),
            "ttl": self.settings.run_ttl,
            "run_id": run_id,
            # Not final: its tool calls are queued, and each one pushes this on as it starts.
            "due": self.due(self.settings.tool_time_limit),
        }
        if status is not None:
            payload["status"] = status.value
        if result is not None:
            payload["result"] = result
        if error is not None:
            payload["error"] = json.dumps(error)
        reply = self._finish_step(
            keys=[base, f"{base}:lease", f"{base}:messages", self.active_key],
            args=[token, step, json.dumps(payload)],
        )
        record = _pairs(reply)
        self.metrics.run_finished(base, record)  # once per run, when the record is final
        return record

    def set_waiting(self, run_id: str, waiting: dict[str, Any]) -> float:
        """Record why the run is waiting; returns since when it has been waiting."""
        key = self.run_key(run_id)
        pipe = self.redis.pipeline()
        pipe.hsetnx(key, "waiting_since", time.time())
        pipe.hset(key, "waiting", json.dumps(waiting))
        pipe.hget(key, "waiting_since")
        return float(pipe.execute()[-1])

    def release_step(self, run_id: str, step: int, token: str, after: float = 0.0) -> None:
        """Give the step back; its retry comes ``after`` seconds from now."""
        base = self.run_key(run_id)
        self._release_step(
            keys=[base, f"{base}:lease", self.active_key],
            args=[token, step, self.due(after + self.settings.step_time_limit), run_id],
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

    def holds_lease(self, run_id: str) -> bool:
        """Whether a worker holds the run's step (a live one, or a dead one until it expires)."""
        return bool(self.redis.exists(f"{self.run_key(run_id)}:lease"))

    def drop_lease(self, run_id: str, token: str) -> None:
        """Let the next step of the run start (it may arrive before this one has finished)."""
        self._drop_lease(keys=[f"{self.run_key(run_id)}:lease"], args=[token])

    # --- tool calls ----------------------------------------------------------------------
    def create_tool_call(self, call_id: str, name: str, arguments: dict[str, Any]) -> bool:
        now = time.time()
        fields = {
            "id": call_id,
            "name": name,
            "arguments": json.dumps(arguments),
            "status": "queued",
            "created_at": now,
        }
        created = self._create_tool(
            keys=[self.tool_key(call_id)], args=[json.dumps(fields), self.settings.run_ttl]
        )
        return bool(created)

    def delete_tool_call(self, call_id: str) -> None:
        self.redis.delete(self.tool_key(call_id))

    def get_tool_call(self, call_id: str) -> dict[str, str] | None:
        data = cast(dict[str, str], self.redis.hgetall(self.tool_key(call_id)))
        return data or None

    def tool_leases(self, call_ids: list[str]) -> list[bool]:
        """Whether each call is held by a worker right now."""
        pipe = self.redis.pipeline(transaction=False)
        for call_id in call_ids:
            pipe.exists(f"{self.tool_key(call_id)}:lease")
        return [bool(n) for n in pipe.execute()]

    def stored_tool_results(self, call_ids: list[str]) -> list[dict[str, Any] | None]:
        """The stored result of each of ``call_ids``, None where there is none yet."""
        pipe = self.redis.pipeline(transaction=False)
        for call_id in call_ids:
            pipe.hget(self.tool_key(call_id), "result")
        return [None if r is None else json.loads(r) for r in pipe.execute()]

    def tool_results(self, call_ids: list[str]) -> list[dict[str, Any]] | None:
        """The stored results of ``call_ids`` in order, or None while any is missing."""
        results = self.stored_tool_results(call_ids)
        if any(r is None for r in results):
            return None
        return cast(list[dict[str, Any]], results)

    def begin_tool(
        self, call_id: str, name: str, arguments: str, run_id: str | None, lease_s: float
    ) -> ToolClaim:
        token = uuid.uuid4().hex
        key = self.tool_key(call_id)
        reply = self._begin_tool(
            keys=[key, f"{key}:lease", self.active_key],
            args=[
                token,
                int(lease_s * 1000),
                time.time(),
                name,
                arguments,
                run_id or "",
                self.due(lease_s),
            ],
        )
        if reply[0] == "done":
            return ToolClaim("done", token, result=json.loads(reply[1]))
        if reply[0] == "busy":
            return ToolClaim("busy", token, wait_s=max(int(reply[1]) / 1000, 0.0))
        return ToolClaim("ok", token)

    def complete_tool(
        self, call_id: str, token: str, result: dict[str, Any], run_id: str | None
    ) -> dict[str, Any]:
        """Store the result unless one is stored; returns the result that won."""
        key = self.tool_key(call_id)
        run_key = self.run_key(run_id) if run_id else f"{key}:no-run"
        stored = self._complete_tool(
            keys=[key, f"{key}:lease", run_key, self.active_key],
            args=[
                token,
                json.dumps(result),
                "succeeded" if result.get("ok") else "failed",
                time.time(),
                self.settings.run_ttl,
                self.due(0),
                run_id or "",
            ],
        )
        return cast(dict[str, Any], json.loads(stored))
