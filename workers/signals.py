"""Every Celery signal handler of the fleet, in one place."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import after_setup_logger, worker_process_init, worker_ready, worker_shutdown

from tasks import watchdog
from tasks.llm import reset_clients
from workers.settings import get_settings


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


@worker_ready.connect
def _start_watchdog(sender: Any = None, **_: Any) -> None:
    # In the worker's main process: every node sweeps for stalled runs, one sweep per
    # interval wins fleet-wide, so the fleet keeps its watchdog whichever nodes die.
    watchdog.start(sender.app, get_settings())


@worker_shutdown.connect
def _stop_watchdog(**_: Any) -> None:
    watchdog.stop()
