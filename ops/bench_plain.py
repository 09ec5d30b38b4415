"""The baseline of ``python -m ops.bench``: stock Celery with a no-op task and a chord body.

A worker runs it with::

    BENCH_REDIS_URL=redis://127.0.0.1:6379/1 \\
        python -m celery -A ops.bench_plain worker -P prefork -c 2 -Q plain

The app keeps Celery's defaults (JSON serializer, Redis broker and result backend) apart from
the queue name, so what the bench compares agentfleet against is what a new Celery user gets.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

#: The only queue the baseline uses, so it never shares a list with agentfleet's queues.
QUEUE = "plain"

#: Where the worker process finds Redis; the bench sets it for the worker it starts.
URL_ENV = "BENCH_REDIS_URL"

NOOP = "plain.noop"
COLLECT = "plain.collect"


def create_app(url: str) -> Celery:
    """A stock Celery app on ``url`` (broker and result backend) with the ``noop`` task."""
    app = Celery("plain", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
    )

    # Not shared: the bench builds several apps in one process, each with its own noop.
    @app.task(name=NOOP, shared=False)
    def noop() -> None:
        """Do nothing: a round trip through the queue and the result backend."""

    @app.task(name=COLLECT, shared=False)
    def collect(results: list[Any]) -> int:
        """A chord body: how many header results arrived."""
        return len(results)

    return app


def noop_task(app: Celery) -> Any:
    """The ``noop`` task registered on ``app``."""
    return app.tasks[NOOP]


def collect_task(app: Celery) -> Any:
    """The ``collect`` chord body registered on ``app``."""
    return app.tasks[COLLECT]


#: The app ``celery -A ops.bench_plain`` loads.
app = create_app(os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"))
