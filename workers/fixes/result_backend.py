"""Celery's Redis result backend for the fleet, selected by the ``result_backend`` URL.

Celery resolves ``<module>:<Class>+redis://...`` to that class with the URL after the ``+``
(``celery.app.backends.by_url``); :func:`backend_url` writes the fleet's URL so. Nothing of
Celery is patched: processes that use another URL get Celery's own backend.

**No pending results in a worker** (a leak; worker processes only, after
:func:`enter_worker_mode`). Every step that dispatches tool calls freezes a chord
(``Task.replace``), and Celery's group barrier calls ``AsyncResult.then`` on each member
(``celery/canvas.py``), which makes ``AsyncBackendMixin.add_pending_result``
(``celery/backends/asynchronous.py``) keep a reference to it and ``SUBSCRIBE`` to its result
channel. A worker never waits for those results (Celery forbids ``get()`` inside a task), so
nothing drains them: without this, each tool call leaves an object and a subscription behind
for the life of the worker, and Redis pushes every tool result to a socket nobody reads.
Upstream: celery/celery#4925 and #9806 (pending results kept by waiters), #10366 (the
ResultConsumer leak fix of 5.7, which still tracks what a worker never reads). Processes that
wait (the API, the CLI, a ``send_task`` client) keep Celery's tracking: ``get()`` needs it.

**A run's failure is its end** (correctness, every process; only workers store results).
Celery stores a failure under the IDs of the tasks after a failed one: a tool call of a run's
chain or chord that dies at its hard time limit stores its error under the run ID, whose
``get()`` would raise it while the run's errback is still failing the run.
``store_result.lua`` stores a failure under a run's ID only as
:class:`~agentfleet.tasks.errors.RunFailed`, and never over a stored ``SUCCESS`` (Celery's
``BaseKeyValueStoreBackend._store_result`` does a ``GET`` then a ``SET``, which a redelivered
task can race), in one round trip.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final
from urllib.parse import urlsplit

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from agentfleet.tasks.errors import RunFailed

#: The script every state is stored with (KEYS, ARGV and its answer in its header).
STORE_SCRIPT: Final = files(__package__).joinpath("store_result.lua").read_text()


@dataclass(frozen=True)
class WorkerMode:
    """What a worker process's backends know that a waiting process's do not."""

    #: The run records' key prefix, to which a task ID is appended (``tasks.store.run_key``).
    run_keys: str


_worker: WorkerMode | None = None


def enter_worker_mode(run_keys: str) -> None:
    """Make this process's fleet backends track no pending result and guard runs' ends."""
    global _worker
    _worker = WorkerMode(run_keys)


def in_worker_mode() -> bool:
    """Whether :func:`enter_worker_mode` ran in this process."""
    return _worker is not None


def store_result_once(
    backend: RedisBackend,
    task_id: str,
    result: Any,
    state: str,
    traceback: Any = None,
    request: Any = None,
    *,
    run_keys: str = "",
) -> Any:
    """``RedisBackend._store_result`` in one round trip: never over a stored ``SUCCESS``, and
    a run's failure only as :class:`~agentfleet.tasks.errors.RunFailed` (``run_keys``: the run
    records' key prefix, to which the task ID is appended; empty: no run is guarded)."""
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
        script = backend._store_once_script = backend.client.register_script(STORE_SCRIPT)
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


class _FleetBackend(RedisBackend):
    """The fleet's changes, shared by the plain and the Sentinel backend."""

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        if _worker is not None:
            return result
        return super().add_pending_result(result, weak=weak, start_drainer=start_drainer)

    def remove_pending_result(self, result: Any) -> Any:
        if _worker is not None:
            return result
        return super().remove_pending_result(result)

    def add_pending_results(self, results: Any, weak: bool = False) -> Any:
        if _worker is not None:
            return list(results)
        return super().add_pending_results(results, weak=weak)

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        run_keys = _worker.run_keys if _worker is not None else ""
        return store_result_once(
            self, task_id, result, state, traceback, request, run_keys=run_keys
        )


class FleetRedisBackend(_FleetBackend):
    """For ``redis://`` and ``rediss://`` result backend URLs."""


class FleetSentinelBackend(_FleetBackend, SentinelBackend):
    """For ``sentinel://`` result backend URLs."""


_CLASSES: Final = {
    "redis": FleetRedisBackend,
    "rediss": FleetRedisBackend,
    "sentinel": FleetSentinelBackend,
}


def backend_url(url: str) -> str:
    """``url`` as a ``result_backend`` that selects the fleet's backend class for its scheme;
    a URL of another backend is returned as it is."""
    scheme = urlsplit(url.split(";", 1)[0].strip()).scheme.lower()
    cls = _CLASSES.get(scheme)
    if cls is None:
        return url
    return f"{cls.__module__}:{cls.__qualname__}+{url}"
