"""How workers handle Celery results on Redis: none tracked, each stored in one round trip.

**No pending results.** Every step that dispatches tool calls freezes a chord
(``Task.replace``), which builds a ``GroupResult``; Celery's Redis backend registers each of
its members as a *pending* result: it keeps a strong reference to it and ``SUBSCRIBE``\\s to
its result channel, on the backend of the thread that froze it. A worker never waits for
those results (Celery forbids ``get()`` inside a task), so they were never drained: each tool
call left an object and a subscription behind for the life of the worker, Redis pushed every
tool result to sockets nobody read, and the ``SUBSCRIBE`` alone was a twentieth of the
``agents`` worker's CPU (py-spy).

**One round trip per state.** Celery reads a task's stored state before writing a new one,
so that a redelivered task cannot overwrite a ``SUCCESS``: a ``GET``, then ``SETEX`` and
``PUBLISH`` in a transaction. Here one script does the same check and write, atomically (the
read-then-write can race), in one round trip; a run's ``STARTED`` and final states are each
one round trip less on its path.

**A run's failure is its end.** Celery stores a failure under the IDs of the tasks after a
failed one: a tool call of a run's chain or chord that dies at its hard time limit stores its
error under the run ID, whose ``get()`` would then raise it while the run's errback is still
failing the run. The same script stores a failure under a run's ID only as
:class:`~agentfleet.tasks.errors.RunFailed`, which the task that ends the run raises with its
record.

**The chord's size in one round trip.** Every tool-dispatching step sets its chord's size:
Celery clears the chord's dispatch claim, then writes the size, two round trips; here one
transaction does both.

:func:`install` applies these in a worker process. Callers that wait for results (the API,
the CLI, a ``send_task`` client) are untouched, except in one way, in every process
(:func:`install_everywhere`):

**No subscription on send.** Celery's Redis backend ``SUBSCRIBE``\\s to a task's result
channel as it sends the task, in case the sender waits for it, and unsubscribes when the
``AsyncResult`` is dropped: the API, which never waits, paid two pub/sub commands per run it
accepted. ``AsyncResult.get()`` subscribes when it starts waiting and then reads the stored
state, so a result that arrived in between is not missed.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import states
from celery.backends.asynchronous import AsyncBackendMixin
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from agentfleet.tasks.errors import RunFailed

# KEYS: the task's meta key, the run record its task ID would name. ARGV: the encoded meta,
# seconds to keep it (0: forever), '1' if it is a failure other than a run's end. Returns 0
# (nothing written) or 1. A SUCCESS stored is never overwritten; a run's end is stored only by
# the task that ends it (RunFailed), never a failure Celery passes on to the run's step from
# a tool call of its chain or chord, or a step's own crash, while the run goes on.
_STORE_UNLESS_SUCCEEDED = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta.status == 'SUCCESS' then return 0 end
end
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


def _untracked(self: AsyncBackendMixin, result: Any, *args: Any, **kwargs: Any) -> Any:
    return result


def store_result_once(
    backend: RedisBackend,
    task_id: str,
    result: Any,
    state: str,
    traceback: Any = None,
    request: Any = None,
    *,
    run_keys: str = "",
    **kwargs: Any,
) -> Any:
    """``RedisBackend._store_result`` in one round trip: never over a stored ``SUCCESS``, and
    a run's failure only as :class:`~agentfleet.tasks.errors.RunFailed` (``run_keys``: the run
    records'
    key prefix, to which the task ID is appended)."""
    meta = backend._get_result_meta(
        result=result, state=state, traceback=traceback, request=request
    )
    meta["task_id"] = bytes_to_str(task_id)
    value = backend.encode(meta)
    if isinstance(value, str) and len(value) > backend._MAX_STR_VALUE_SIZE:
        raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
    expires = backend.failure_expires if state == states.FAILURE else backend.expires
    script = getattr(backend, "_store_once_script", None)
    if script is None:
        script = backend._store_once_script = backend.client.register_script(
            _STORE_UNLESS_SUCCEEDED
        )
    key = backend.get_key_for_task(task_id)
    foreign = state == states.FAILURE and not _is_run_end(result)
    store = functools.partial(
        script,
        keys=[key, f"{run_keys}{bytes_to_str(task_id)}" if run_keys else key],
        args=[value, int(expires or 0), "1" if foreign and run_keys else "0"],
    )
    backend.ensure(store, ())
    return result


def _is_run_end(result: Any) -> bool:
    """Whether a failure to store is a run's end: Celery hands the backend the exception
    already encoded (``exc_type``, ``exc_message``, ``exc_module``)."""
    if isinstance(result, dict):
        return result.get("exc_type") == RunFailed.__name__
    return isinstance(result, RunFailed)


def set_chord_size_at_once(backend: RedisBackend, group_id: str, chord_size: int) -> None:
    """``RedisBackend.set_chord_size`` in one round trip: a reapplied chord (same group ID)
    loses its old dispatch claim, and gets its size."""

    def write() -> None:
        with backend.client.pipeline() as pipe:
            pipe.delete(backend.get_key_for_group(group_id, ".c"))
            pipe.set(
                backend.get_key_for_group(group_id, ".s"),
                chord_size,
                ex=backend.chord_expires or None,
            )
            pipe.execute()

    backend.ensure(write, ())


def _no_subscription_on_send(self: RedisBackend, producer: Any, task_id: str) -> None:
    return None


def install_everywhere() -> None:
    """What every process (API, workers, clients built on the app) changes, in this process."""
    RedisBackend.on_task_call = _no_subscription_on_send


def install(run_keys: str) -> None:
    """Worker mode for Celery's result backends, in this process (``run_keys``: the run
    records' key prefix)."""
    AsyncBackendMixin.add_pending_result = _untracked
    AsyncBackendMixin.remove_pending_result = _untracked
    AsyncBackendMixin.add_pending_results = lambda self, results, weak=False: list(results)
    RedisBackend._store_result = functools.partialmethod(store_result_once, run_keys=run_keys)
    RedisBackend.set_chord_size = set_chord_size_at_once
