"""Build the fleet's Celery app."""

from __future__ import annotations

from celery import Celery

from agentfleet.tasks.settings import Settings
from agentfleet.workers.broker import celery_class
from agentfleet.workers.conf import celery_config


def create_app(settings: Settings) -> Celery:
    """A Celery app configured from ``settings`` with every agentfleet task registered."""
    # Imported here: the task modules import agentfleet.workers.queues, not this module, so there is
    # no cycle, and the app stays the only place that knows about every task.
    from agentfleet.tasks import register_tasks

    app = celery_class(settings)(
        "agentfleet",
        set_as_current=False,
        # Task argument and result reprs are summarized before they reach events, Flower
        # and logs (workers/fixes/redact.py): needed wherever a task is sent.
        amqp="agentfleet.workers.fixes.redact:RedactingAMQP",
        events="agentfleet.workers.fixes.redact:RedactingEvents",
    )
    app.conf.update(celery_config(settings))
    # Worker-only fixes are installed by the worker itself (workers/signals.py).
    register_tasks(app, settings)
    return app
