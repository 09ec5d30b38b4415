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

# KEYS: the task's meta key. ARGV: the encoded meta, seconds to keep it (0: forever).
# Returns 0 (a SUCCESS is stored already: nothing written) or 1.
_STORE_UNLESS_SUCCEEDED = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta.status == 'SUCCESS' then return 0 end
end
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
    **kwargs: Any,
) -> Any:
    """``RedisBackend._store_result`` in one round trip: never over a stored ``SUCCESS``."""
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
    store = functools.partial(
        script, keys=[backend.get_key_for_task(task_id)], args=[value, int(expires or 0)]
    )
    backend.ensure(store, ())
    return result


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


def install() -> None:
    """Worker mode for Celery's result backends, in this process."""
    AsyncBackendMixin.add_pending_result = _untracked
    AsyncBackendMixin.remove_pending_result = _untracked
    AsyncBackendMixin.add_pending_results = lambda self, results, weak=False: list(results)
    RedisBackend._store_result = store_result_once
    RedisBackend.set_chord_size = set_chord_size_at_once
