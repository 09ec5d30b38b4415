"""Task bodies: agent runs, tool calls, the LLM provider layer, the run store.

Task names are constants in :mod:`agentfleet.tasks.names`; :func:`register_tasks` binds every task
to an app, so nothing here depends on an implicit global Celery app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

    from agentfleet.tasks.settings import Settings


def register_tasks(app: Celery, settings: Settings) -> None:
    """Load the configured tool and agent modules (and agent files), and register every
    agentfleet task on ``app``."""
    from agentfleet.tasks import agent, batch, callbacks, toolcall
    from agentfleet.tasks.agents import load_agents
    from agentfleet.tasks.tools import load_tool_modules

    load_tool_modules(settings.workers.tool_modules)
    # After the tools: an agent names its tools when it is declared.
    load_agents(settings.workers.agent_modules, settings.workers.agent_files)
    agent.register(app, settings)
    toolcall.register(app, settings)
    batch.register(app, settings)
    callbacks.register(app, settings)
