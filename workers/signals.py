"""Every Celery signal handler of the fleet, in one place."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    celeryd_init,
    task_received,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from agentfleet.tasks import fleet, watchdog
from agentfleet.tasks.llm import reset_clients
from agentfleet.tasks.redisconn import wait_out_outages, warn_if_not_durable
from agentfleet.tasks.settings import get_settings, warn_unknown_variables
from agentfleet.workers import fixes, logs
from agentfleet.workers.conf import worker_config
from agentfleet.workers.fixes import redact

log = logging.getLogger(__name__)


@celeryd_init.connect
def _wait_out_redis_outages(conf: Any, **_: Any) -> None:
    # Celery's hook for worker-only configuration, sent before any client, backend or pool
    # child exists: a task whose Redis restarts waits for it instead of failing halfway
    # through a step. The API never gets here and answers 503 at once.
    settings = get_settings()
    wait_out_outages(settings.redis_outage_wait)
    conf.update(worker_config(settings))
    # Fixes of Celery's internals that only a worker needs (workers/fixes/).
    fixes.install_in_worker(settings)


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


@worker_ready.connect
def _publish_registrations(sender: Any = None, **_: Any) -> None:
    # In the worker's main process, whose registry its pool children share: the API refuses
    # tools no live node has, and GET /v1/tools shows which node has which (tasks/fleet.py).
    queues = sender.app.amqp.queues.consume_from or {}
    fleet.start(get_settings(), str(sender.hostname), list(queues))


@worker_ready.connect
def _warn_if_redis_not_durable(**_: Any) -> None:
    # Once per worker node, from its main process: the broker is up by now, so the run store's
    # Redis (the same one, unless configured apart) answers at once.
    warn_if_not_durable(get_settings())


@worker_shutdown.connect
def _stop_watchdog(**_: Any) -> None:
    watchdog.stop()


@worker_shutdown.connect
def _withdraw_registrations(**_: Any) -> None:
    fleet.stop()


@after_setup_logger.connect
def _structured_root_logs(logger: logging.Logger, loglevel: int | None = None, **_: Any) -> None:
    from celery.utils.log import get_multiprocessing_logger

    settings = get_settings()
    logs.configure_celery_logger(logger, settings)
    logs.quiet_receipts(loglevel, settings)  # Celery passes the worker's -l as a number
    pool_logger = get_multiprocessing_logger()  # billiard's, with a handler of its own
    if pool_logger is not None:
        logs.configure_celery_logger(pool_logger, settings)


@after_setup_task_logger.connect
def _structured_task_logs(logger: logging.Logger, **_: Any) -> None:
    # celery.task has its own handler and does not propagate to the root.
    logs.configure_celery_logger(logger, get_settings())


@celeryd_init.connect
def _no_banner_with_json_logs(instance: Any, **_: Any) -> None:
    # The startup banner is printed straight to stdout, the one output that would not be
    # JSON; it is replaced by the "worker starting" line below.
    if get_settings().log_format == "json":
        instance.quiet = True


@celeryd_after_setup.connect
def _log_worker_start(sender: str, instance: Any, **_: Any) -> None:
    queues = ",".join(sorted(instance.app.amqp.queues.consume_from or ()))
    pool = getattr(instance.pool_cls, "__module__", str(instance.pool_cls)).rsplit(".", 1)[-1]
    log.info(
        "worker %s starting: queues=%s pool=%s concurrency=%s",
        sender,
        queues,
        pool,
        instance.concurrency,
    )


@celeryd_after_setup.connect
def _log_worker_fixes(**_: Any) -> None:
    # Installed at celeryd_init, before the worker's logging exists.
    log.info("%s", fixes.summary())


@celeryd_after_setup.connect
def _name_unknown_variables(**_: Any) -> None:
    # Here rather than at import: by now the warning goes to the worker's configured log.
    warn_unknown_variables(log, get_settings())


@task_received.connect
def _redact_received(request: Any, **_: Any) -> None:
    # Messages from publishers that do not run our code carry their own argument reprs.
    redact.redact_received(request)
