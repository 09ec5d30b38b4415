"""Every Celery signal handler of the fleet, in one place."""

from __future__ import annotations

import logging
from typing import Any

from celery import states
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    before_task_publish,
    celeryd_after_setup,
    celeryd_init,
    task_postrun,
    task_prerun,
    task_received,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from agentfleet.tasks import fleet, tracing, watchdog
from agentfleet.tasks.errors import RunFailed
from agentfleet.tasks.llm import reset_clients
from agentfleet.tasks.redisconn import wait_out_outages, warn_if_not_durable
from agentfleet.tasks.settings import get_settings, warn_unknown_variables
from agentfleet.workers import fixes, logs, taskargs
from agentfleet.workers.conf import worker_config
from agentfleet.workers.fixes import redact

log = logging.getLogger(__name__)


@celeryd_init.connect
def _wait_out_redis_outages(conf: Any, **_: Any) -> None:
    # Celery's hook for worker-only configuration, sent before any client, backend or pool
    # child exists: a task whose Redis restarts waits for it instead of failing halfway
    # through a step. The API never gets here and answers 503 at once.
    settings = get_settings()
    wait_out_outages(settings.redis.redis_outage_wait)
    conf.update(worker_config(settings))
    # Fixes of Celery's internals that only a worker needs (workers/fixes/).
    fixes.install_in_worker(settings, conf)


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
    if get_settings().logs.log_format == "json":
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


# --- Tracing (agentfleet.tasks.tracing) ------------------------------------------------------
# Connected only when the OTEL_* variables ask for traces: Celery skips a signal that has no
# receiver, so a fleet without tracing does no tracing work per task or per message.

#: Where a task's span waits for its end, on the task's request (one per execution).
_SPAN_ATTR = "agentfleet_span"


def _start_tracing(sender: Any = None, **_: Any) -> None:
    # celeryd_init: in the worker's main process, before the pool's children are forked.
    tracing.configure("agentfleet-worker", str(sender or ""))


def _carry_trace(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # Every message carries the context of the span publishing it, unless its publisher set
    # one (a step's successor: agentfleet.tasks.lifecycle.step_signature; a retry keeps its own).
    if headers is not None:
        tracing.inject(headers)


def _start_task_span(task: Any = None, task_id: str | None = None, **kw: Any) -> None:
    if task is None or not taskargs.is_ours(task.name):
        return
    name, attributes = taskargs.span_of(task.name, task_id, kw.get("args"), kw.get("kwargs"))
    request = task.request
    delivery = request.delivery_info or {}
    if delivery.get("routing_key"):
        attributes["messaging.destination.name"] = delivery["routing_key"]
    attributes["celery.retries"] = int(request.retries or 0)
    setattr(request, _SPAN_ATTR, tracing.start_task(name, request.headers, attributes))


def _end_task_span(task: Any = None, state: str | None = None, **kw: Any) -> None:
    handle = getattr(task.request, _SPAN_ATTR, None) if task is not None else None
    if handle is not None:
        setattr(task.request, _SPAN_ATTR, None)
        failure = _failure(state, kw.get("retval"))
        tracing.end_task(handle, {"celery.state": state or ""}, failure)


def _failure(state: str | None, retval: Any) -> tuple[str, str] | None:
    """(error type, message) of a task that failed: raised (not a retry, nor a step replaced by
    its tool calls: Celery's control flow), or a tool call that answered with an error (its
    task succeeds: the model is shown the error)."""
    if state == states.FAILURE and isinstance(retval, RunFailed):
        error = retval.record.get("error") or {}
        return str(error.get("code") or retval.record.get("status") or "run_failed"), str(retval)
    if state == states.FAILURE and isinstance(retval, BaseException):
        return type(retval).__name__, str(retval)
    if state == states.SUCCESS and isinstance(retval, dict) and retval.get("ok") is False:
        error = retval.get("error") or {}
        return str(error.get("code") or "tool_error"), str(error.get("message") or "")
    return None


def _flush_spans(**_: Any) -> None:
    # A pool child exits without running atexit hooks: export what it still holds.
    tracing.flush()


def trace_tasks() -> None:
    """Connect the tracing hooks (once; :func:`agentfleet.tasks.tracing.requested` is true)."""
    hooks = (
        (celeryd_init, _start_tracing),
        (before_task_publish, _carry_trace),
        (task_prerun, _start_task_span),
        (task_postrun, _end_task_span),
        (worker_process_shutdown, _flush_spans),
        (worker_shutdown, _flush_spans),
    )
    for signal, receiver in hooks:
        signal.connect(receiver, weak=False, dispatch_uid=f"agentfleet.tracing.{receiver.__name__}")


# At import, before Celery builds its task tracers, which read who receives task_prerun and
# task_postrun. A misconfiguration (an exporter we lack) stops the worker here, by name.
if tracing.requested():
    trace_tasks()
