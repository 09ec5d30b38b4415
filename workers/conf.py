"""The Celery configuration, built from :class:`~agentfleet.tasks.settings.Settings` in one place.

Runs are long and their steps idempotent, so the fleet uses late acknowledgement with its own
redelivery cap. The time arithmetic that keeps a step from being delivered twice:

    llm_timeout (60)  <  step soft limit (90)  <  step hard limit (120)
    max retry countdown (300) + longest hard limit (120) + margin (60)  <  visibility timeout (3600)

A countdown message is reserved by a worker as soon as it is fetched and held unacked until
its ETA, then it runs for at most the hard limit; only after the visibility timeout does Redis
hand it to someone else. :class:`Settings` refuses values that break this ordering.
"""

from __future__ import annotations

import math
from typing import Any

from agentfleet.tasks.redisconn import RETRY_INTERVAL
from agentfleet.tasks.setting_groups import BrokerKind, broker_kind
from agentfleet.tasks.settings import Settings
from agentfleet.workers import queues
from agentfleet.workers.broker import broker_config
from agentfleet.workers.fixes.result_backend import backend_url


def transport_options(settings: Settings) -> dict[str, Any]:
    """Redis transport options of the result backend, and of the broker if it is Redis."""
    return {
        # Must be the same on every process sharing the broker DB: the shortest one wins.
        "visibility_timeout": settings.celery.visibility_timeout,
        "unacked_restore_interval": settings.celery.unacked_restore_interval,
        "unacked_restore_throttle": settings.celery.unacked_restore_throttle,
        "health_check_interval": 25,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        # Acks come from every pool thread (late acks); kombu's default of 10 connections per
        # channel makes them fail under load, and a failed ack waits out the visibility timeout.
        "max_connections": settings.redis.redis_max_connections,
        **sentinel_options(settings),
    }


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """Transport options for ``sentinel://`` broker and backend URLs (empty otherwise)."""
    if not settings.redis.redis_sentinel_master:
        return {}
    options: dict[str, Any] = {"master_name": settings.redis.redis_sentinel_master}
    if settings.redis.redis_sentinel_password:
        # Credentials of the Sentinel servers; Redis's own password is in the URL.
        options["sentinel_kwargs"] = {
            "password": settings.redis.redis_sentinel_password.get_secret_value()
        }
    return options


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting agentfleet sets. A test checks each key is a real Celery setting."""
    transport = transport_options(settings)
    return {
        "broker_url": settings.broker,
        # The fleet's subclass of Celery's Redis backend (workers/fixes/result_backend.py).
        "result_backend": backend_url(settings.backend),
        # broker_transport_options and task_queues, for Redis or RabbitMQ
        # (agentfleet.workers.broker).
        **broker_config(settings, redis_transport=transport),
        "result_backend_transport_options": {
            **transport,
            "retry_policy": {"timeout": 5.0},
        },
        # Docs: set it in all three places, or the shortest value silently wins.
        "visibility_timeout": settings.celery.visibility_timeout,
        # JSON only: anyone who can write to Redis must not get code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Queues and routes.
        "task_default_queue": queues.AGENTS,
        "task_routes": queues.ROUTES,
        "task_create_missing_queues": False,
        # Durability: ack after the step is applied, requeue if the process dies; our own
        # per-step delivery counter (agentfleet.tasks.store) stops a step that keeps killing
        # workers.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Off on purpose: our tasks deduplicate themselves (a stored tool result is returned,
        # an applied step is skipped), and a redelivered chord header must report to its
        # chord again. A worker can die after storing a header's SUCCESS but before the
        # chord body is published; Celery's Redis join counts each header once and re-claims
        # an abandoned dispatch, so the redelivery completes the chord. Celery's own dedup
        # would skip that task and lose the chord.
        "worker_deduplicate_successful_tasks": False,
        "worker_soft_shutdown_timeout": settings.workers.worker_soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_eta_task_limit": 1000,
        # Default limits for any task that does not set its own.
        "task_soft_time_limit": settings.limits.step_soft_time_limit,
        "task_time_limit": settings.limits.step_time_limit,
        # Results and progress.
        "task_track_started": True,
        "result_expires": settings.celery.result_expires,
        "result_extended": False,  # would copy prompts into every stored state
        "result_backend_always_retry": True,
        "result_backend_max_retries": 10,
        "redis_max_connections": settings.redis.redis_max_connections,
        "redis_socket_timeout": 30.0,
        "redis_socket_connect_timeout": 5.0,
        "redis_backend_health_check_interval": 25,
        # Producers: bounded waits so the API answers 503 instead of hanging on a dead broker.
        "broker_connection_retry_on_startup": True,
        "broker_pool_limit": 64,
        "broker_pool_acquire_timeout": 10.0,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 3,
            "interval_start": 0.0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        # Events for Flower and monitoring.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }


def api_config(settings: Settings) -> dict[str, Any]:
    """What the API changes in :func:`celery_config`: a publish answers within
    ``api_redis_timeout`` or fails, so a paused Redis gets the caller a 503 in about a second.

    kombu's Redis transport has no socket timeout of its own: a publish to a Redis that
    accepts connections but never answers (stopped with SIGSTOP, a stalled host) would wait
    for it forever. Workers keep that: their ``BRPOP`` blocks by design.
    """
    config: dict[str, Any] = {
        # Celery publishes each task-sent event under one lock per process: with Redis hung,
        # each request's event waits out the timeouts of all those before it. Flower sees
        # the API's tasks from their task-received events on; a POST is a round trip shorter.
        "task_send_sent_event": False,
    }
    if broker_kind(settings.broker) is BrokerKind.REDIS:
        timeout = settings.api.api_redis_timeout
        config["broker_transport_options"] = {
            **transport_options(settings),
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry_on_timeout": False,
            # A new broker connection is tried once, not again for broker_connection_timeout.
            "max_retries": 0,
        }
        # No retry: kombu reconnects before a retry and waits out a hung Redis once more per
        # step (8 s measured at a 1 s timeout). A connection that a Redis restart closed is
        # replaced by the pool before use (redis-py checks it), so none is needed for that.
        config["task_publish_retry"] = False
    return config


def worker_config(settings: Settings) -> dict[str, Any]:
    """What workers change in :func:`celery_config`: they wait out a Redis outage, and the
    threads of a pool share one result backend.

    A worker whose Redis restarts keeps retrying, for about ``redis_outage_wait`` seconds, the
    publish or result write of the task it holds, instead of failing the task: with Redis as
    the broker a failed task is still acknowledged once Redis is back, and its run would stop.
    The API keeps the short budgets above, shortened further by :func:`api_config`.
    """
    attempts = max(1, math.ceil(settings.redis.redis_outage_wait / RETRY_INTERVAL))
    return {
        "task_publish_retry_policy": {
            "max_retries": attempts,
            "interval_start": 0.0,
            "interval_step": RETRY_INTERVAL,
            "interval_max": RETRY_INTERVAL,
        },
        # Sleeps of up to 1 s with full jitter: about 0.5 s each.
        "result_backend_max_retries": attempts,
        "result_backend_base_sleep_between_retries_ms": 100,
        "result_backend_max_sleep_between_retries_ms": 1000,
        # One backend per process, shared by the pool's threads. Celery's default gives each
        # thread a backend of its own, with its own connection pool: a threads worker would
        # keep a Redis connection, and its reader's 64 KB buffer, for every step it ever ran
        # at once, two fifths of the memory a run in flight cost it (docs/performance.md,
        # "What was tried"). A worker never waits for results, so the backend's one
        # thread-unsafe part, its result subscription, stays unused
        # (workers/fixes/result_backend.py).
        "result_backend_thread_safe": True,
    }
