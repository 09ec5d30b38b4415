"""Workers wait for no task result, so they track none.

Every step that dispatches tool calls freezes a chord (``Task.replace``), which builds a
``GroupResult``; Celery's Redis backend registers each of its members as a *pending* result:
it keeps a strong reference to it and ``SUBSCRIBE``\\s to its result channel, on the backend of
the thread that froze it. A worker never waits for those results (Celery forbids ``get()``
inside a task), so they were never drained: each tool call left an object and a subscription
behind for the life of the worker, Redis pushed every tool result to sockets nobody read,
and the ``SUBSCRIBE`` alone was a twentieth of the ``agents`` worker's CPU (py-spy).

:func:`untrack_pending_results` makes the registration a no-op in a worker process. Callers
that do wait for results (the API, the CLI, a ``send_task`` client) are untouched.
"""

from __future__ import annotations

from typing import Any

from celery.backends.asynchronous import AsyncBackendMixin


def _untracked(self: AsyncBackendMixin, result: Any, *args: Any, **kwargs: Any) -> Any:
    return result


def untrack_pending_results() -> None:
    """In this process, results are never registered as pending (nor unregistered)."""
    AsyncBackendMixin.add_pending_result = _untracked
    AsyncBackendMixin.remove_pending_result = _untracked
    AsyncBackendMixin.add_pending_results = lambda self, results, weak=False: list(results)
