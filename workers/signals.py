"""Every Celery signal handler of the fleet, in one place."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import after_setup_logger, celeryd_init, worker_process_init

from tasks.llm import reset_clients
from tasks.redisconn import wait_out_outages
from workers.conf import worker_config
from workers.settings import get_settings


@celeryd_init.connect
def _wait_out_redis_outages(conf: Any, **_: Any) -> None:
    # Celery's hook for worker-only configuration, sent before any client, backend or pool
    # child exists: a task whose Redis restarts waits for it instead of failing halfway
    # through a step. The API never gets here and answers 503 at once.
    settings = get_settings()
    wait_out_outages(settings.redis_outage_wait)
    conf.update(worker_config(settings))


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
