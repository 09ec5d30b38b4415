"""Every Celery signal handler of the fleet, in one place."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import after_setup_logger, worker_process_init

from tasks.llm import reset_clients


@worker_process_init.connect
def _fresh_clients_after_fork(**_: Any) -> None:
    # A pool child inherits the parent's HTTP clients, sockets included; sharing them across
    # processes corrupts TLS streams. Each child builds its own on first use.
    reset_clients()


@after_setup_logger.connect
def _quiet_http_logs(**_: Any) -> None:
    # The HTTP client logs one INFO line per LLM call; at fleet rates that drowns the
    # task log. Its warnings and errors still show.
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)
