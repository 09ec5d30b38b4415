"""The agentfleet Celery app: ``celery -A agentfleet.workers worker -Q agents`` starts a worker.

``agentfleet.workers.app`` is built on first access from
:func:`agentfleet.tasks.settings.get_settings`, so every process that uses it (worker, API, CLI)
reads the same ``AGENTFLEET_*`` variables, and task modules can import ``agentfleet.tasks.settings``
without building the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentfleet.tasks.settings import Settings, get_settings

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

__all__ = ["Settings", "app", "get_settings"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from agentfleet.workers import signals  # connects the per-process hooks
        from agentfleet.workers.factory import create_app

        built = create_app(get_settings())
        globals()["app"] = built
        del signals
        return built
    raise AttributeError(f"module 'agentfleet.workers' has no attribute {name!r}")
