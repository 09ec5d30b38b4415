"""The run ID of the current API request, for log lines (``agentfleet.workers.logs``)."""

from __future__ import annotations

import re
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from agentfleet.tasks import tracing
from agentfleet.tasks.context import REQUEST_RUN_ID

#: Routes that name a run: ``/v1/runs/{run_id}`` and anything below it.
RUN_PATH: Final = re.compile(r"^/v1/runs/(?P<run_id>[^/]+)")


class RunIdContext:
    """Sets the request's run ID (from its path) for every line logged while it is served,
    and on its span when tracing is on.

    Sync routes run in a worker thread with a copy of this context, so they see it too.
    ``POST /v1/runs`` sets it once the new run's ID exists (:mod:`agentfleet.tasks.intake`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = RUN_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        token = REQUEST_RUN_ID.set(match["run_id"])
        tracing.tag_run(match["run_id"])  # the request's span (FastAPI's) names the run too
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_RUN_ID.reset(token)
