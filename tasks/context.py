"""The run a piece of work is for, named on every line it logs (:mod:`agentfleet.workers.logs`)."""

from __future__ import annotations

from contextvars import ContextVar

#: The run of the current API request: the one its route names, or the one it creates.
REQUEST_RUN_ID: ContextVar[str | None] = ContextVar("agentfleet_request_run_id", default=None)
