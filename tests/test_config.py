"""Settings validation and the Celery configuration built from them."""

from __future__ import annotations

import pytest
from celery import Celery
from celery.app.defaults import DEFAULTS
from pydantic import ValidationError

from workers.conf import api_config, celery_config, worker_config
from workers.factory import create_app
from workers.settings import Settings

#: Documented settings that Celery reads with ``conf.get`` but leaves out of its defaults table.
READ_BUT_NOT_IN_DEFAULTS = {
    "visibility_timeout",  # the Redis broker docs: set it in conf and both transport options
    "redis_backend_health_check_interval",  # celery/backends/redis.py, configuration.rst
}


#: A RabbitMQ broker URL; building the configuration does not connect to it.
AMQP = "amqp://user:secret@rabbit.example:5672/fleet"


@pytest.mark.parametrize("broker", [None, AMQP])
def test_every_key_we_set_is_a_real_celery_setting(broker: str | None) -> None:
    settings = Settings(broker_url=broker)
    config = {**celery_config(settings), **worker_config(settings), **api_config(settings)}
    unknown = sorted(set(config) - set(DEFAULTS) - READ_BUT_NOT_IN_DEFAULTS)
    assert unknown == []
    assert "redis_backend_health_check_interval" not in DEFAULTS  # else drop it from the list


def test_only_json_is_accepted() -> None:
    config = celery_config(Settings())
    assert config["accept_content"] == ["json"]
    assert config["result_accept_content"] == ["json"]
    assert config["task_serializer"] == config["result_serializer"] == "json"


def test_durability_settings_for_long_idempotent_tasks() -> None:
    s = Settings()
    config = celery_config(s)
    assert config["task_acks_late"]
    assert config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["task_track_started"]
    assert config["worker_send_task_events"]
    assert config["result_backend_always_retry"]
    assert config["worker_soft_shutdown_timeout"] > 0
    vt = s.visibility_timeout
    assert config["broker_transport_options"]["visibility_timeout"] == vt
    assert config["result_backend_transport_options"]["visibility_timeout"] == vt
    assert config["visibility_timeout"] == vt
    assert s.llm_timeout < s.step_soft_time_limit < s.step_time_limit < vt


def test_app_has_named_tasks_on_their_queues() -> None:
    app = create_app(Settings())
    routes = app.conf.task_routes
    assert routes["agentfleet.run"]["queue"] == "agents"
    assert routes["agentfleet.agent.step"]["queue"] == "agents"
    assert routes["agentfleet.tool.call"]["queue"] == "tools"
    assert {"agentfleet.run", "agentfleet.agent.step", "agentfleet.tool.call"} <= set(app.tasks)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"llm_timeout": 100}, "llm_timeout < step_soft_time_limit"),
        ({"step_soft_time_limit": 130}, "step_soft_time_limit < step_time_limit"),
        ({"visibility_timeout": 400}, "visibility_timeout=400s is too short"),
        ({"tool_soft_time_limit": 70}, "tool_soft_time_limit < tool_time_limit"),
        ({"default_max_steps": 60}, "default_max_steps"),
        ({"broker_url": "sqs://queue"}, "unsupported broker URL scheme 'sqs'"),
        (
            {"broker_url": AMQP, "broker_consumer_timeout": 150},
            "broker_consumer_timeout=150.0s is too short",
        ),
    ],
)
def test_impossible_settings_fail_at_start(overrides: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings(**overrides)  # type: ignore[arg-type]


def test_a_redis_broker_gets_redis_transport_options_and_classic_queues() -> None:
    config = celery_config(Settings(broker_url="redis://127.0.0.1:6390/1"))
    assert config["broker_transport_options"]["visibility_timeout"] == 3600
    assert [q.queue_arguments for q in config["task_queues"]] == [None, None, None]
    assert "worker_detect_quorum_queues" not in config
    assert type(create_app(Settings())).send_task is Celery.send_task


def test_a_rabbitmq_broker_gets_quorum_queues_and_confirms() -> None:
    settings = Settings(broker_url=AMQP)
    config = celery_config(settings)
    # No Redis option reaches RabbitMQ; the result backend (Redis) keeps its own.
    assert config["broker_transport_options"] == {"confirm_publish": True}
    assert config["result_backend_transport_options"]["visibility_timeout"] == 3600
    assert [q.name for q in config["task_queues"]] == ["agents", "tools", "batch"]
    for queue in config["task_queues"]:
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.exchange.type == "topic"  # native delayed delivery routes through it
        assert queue.durable
    assert config["worker_detect_quorum_queues"] is True
    assert config["broker_native_delayed_delivery_queue_type"] == "quorum"
    # Countdowns under a second are rounded up before Celery routes them (workers.broker).
    assert type(create_app(settings)).send_task is not Celery.send_task


def test_workers_wait_out_a_redis_outage_and_the_api_does_not() -> None:
    settings = Settings(redis_outage_wait=30)
    api, worker = celery_config(settings), worker_config(settings)
    assert api["task_publish_retry_policy"]["max_retries"] == 3
    assert api["result_backend_max_retries"] == 10
    # The API's own publishes answer within its Redis timeout, without retries.
    answers_fast = api_config(settings)
    assert answers_fast["task_publish_retry"] is False
    options = answers_fast["broker_transport_options"]
    assert options["socket_timeout"] == options["socket_connect_timeout"] == 1.0
    assert options["retry_on_timeout"] is False
    assert worker["task_publish_retry_policy"]["max_retries"] == 60  # every 0.5 s for 30 s
    assert worker["result_backend_max_retries"] == 60


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLEET_REDIS_URL", "redis://example:6390/3")
    monkeypatch.setenv("AGENTFLEET_TOOL_MODULES", "a.b, c")
    s = Settings()
    assert s.redis_url == "redis://example:6390/3"
    assert s.broker == s.backend == "redis://example:6390/3"
    assert s.tool_modules == ["a.b", "c"]
    assert s.llm_endpoint == s.simulator_url  # no key configured: the simulator
    monkeypatch.setenv("AGENTFLEET_LLM_BASE_URL", "https://llm.example/v1")
    monkeypatch.setenv("AGENTFLEET_LLM_API_KEY", "sk-test")
    s = Settings()
    assert s.llm_endpoint == "https://llm.example/v1"
    assert s.llm_key == "sk-test"
