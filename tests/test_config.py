"""Settings validation and the Celery configuration built from them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from celery import Celery
from celery.app.defaults import DEFAULTS
from pydantic import ValidationError

from agentfleet.tasks.setting_groups import ProviderConfig
from agentfleet.tasks.settings import Settings, unknown_variables
from agentfleet.workers.conf import api_config, celery_config, worker_config
from agentfleet.workers.factory import create_app
from ops.stack import Stack

#: Documented settings that Celery reads with ``conf.get`` but leaves out of its defaults table.
READ_BUT_NOT_IN_DEFAULTS = {
    "visibility_timeout",  # the Redis broker docs: set it in conf and both transport options
    "redis_backend_health_check_interval",  # celery/backends/redis.py, configuration.rst
    "result_backend_thread_safe",  # celery/backends/base.py, celery/app/base.py
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
    vt = s.celery.visibility_timeout
    assert config["broker_transport_options"]["visibility_timeout"] == vt
    assert config["result_backend_transport_options"]["visibility_timeout"] == vt
    assert config["visibility_timeout"] == vt
    assert s.llm.llm_timeout < s.limits.step_soft_time_limit < s.limits.step_time_limit < vt


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
    # Countdowns under a second are rounded up before Celery routes them
    # (agentfleet.workers.broker).
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
    assert s.redis.redis_url == "redis://example:6390/3"
    assert s.broker == s.backend == "redis://example:6390/3"
    assert s.workers.tool_modules == ["a.b", "c"]
    assert s.llm.llm_endpoint == s.llm.simulator_url  # no key configured: the simulator
    monkeypatch.setenv("AGENTFLEET_LLM_BASE_URL", "https://llm.example/v1")
    monkeypatch.setenv("AGENTFLEET_LLM_API_KEY", "sk-test")
    s = Settings()
    assert s.llm.llm_endpoint == "https://llm.example/v1"
    assert s.llm.llm_key == "sk-test"


def test_unknown_variables_are_named_with_the_closest_setting() -> None:
    environ = {
        "AGENTFLEET_TOOL_MODULE": "mytools",
        "agentfleet_llm_timout": "30",  # the environment source ignores case
        "AGENTFLEET_NO_SUCH_THING": "1",
        "AGENTFLEET_REDIS_URL": "redis://127.0.0.1:6379/0",
        "agentfleet_log_level": "debug",
        "AGENTFLEET_API_URL": "http://127.0.0.1:8000",  # the client's and the CLI's
        "AGENTFLEET_API_KEY": "af_x",
        "AGENTFLEET_API_PORT": "8000",  # docker-compose's host ports
        "AGENTFLEET_FLOWER_HOST_PORT": "5555",
        "HOME": "/root",
    }
    found = {u.name: u.closest for u in unknown_variables(environ)}
    assert found == {
        "AGENTFLEET_TOOL_MODULE": "AGENTFLEET_TOOL_MODULES",
        "agentfleet_llm_timout": "AGENTFLEET_LLM_TIMEOUT",
        "AGENTFLEET_NO_SUCH_THING": None,
    }
    messages = [u.message() for u in unknown_variables(environ)]
    assert (
        "AGENTFLEET_TOOL_MODULE is not an agentfleet setting and is ignored; "
        "did you mean AGENTFLEET_TOOL_MODULES?"
    ) in messages
    assert "AGENTFLEET_NO_SUCH_THING is not an agentfleet setting and is ignored" in messages


def test_a_variable_a_provider_reads_its_key_from_is_known() -> None:
    environ = {"AGENTFLEET_OPENAI_KEY": "sk-test"}
    provider = ProviderConfig(
        name="openai", base_url="http://llm/v1", api_key_env="AGENTFLEET_OPENAI_KEY"
    )
    assert [u.name for u in unknown_variables(environ)] == ["AGENTFLEET_OPENAI_KEY"]
    assert unknown_variables(environ, Settings(providers=[provider])) == []


def test_every_variable_the_stack_sets_is_known(tmp_path: Path) -> None:
    stack = Stack(
        tmp_path,
        redis_url="redis://127.0.0.1:6390/0",
        broker_url="amqp://guest:guest@127.0.0.1:5672//",
        simulator_url="http://127.0.0.1:8799/v1",
        api_url="http://127.0.0.1:8000",
        api_key="af_x",
    )
    assert [name for name in stack.env() if name.startswith("AGENTFLEET_")]
    assert unknown_variables(stack.env()) == []


def test_settings_of_another_environment_ignore_this_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLEET_RESULT_BACKEND", "redis://elsewhere:6379/1")
    monkeypatch.setenv("AGENTFLEET_LOG_LEVEL", "DEBUG")
    environ = {
        "agentfleet_redis_url": "redis://fleet:6390/0",
        "AGENTFLEET_TOOL_MODULES": "a.b, c",
        "AGENTFLEET_TENANT_LIMITS": '{"capped": 3}',
        "AGENTFLEET_LLM_API_KEY": "",  # empty counts as unset, as in the environment
    }
    s = Settings.from_environ(environ)
    assert s.broker == s.backend == "redis://fleet:6390/0"
    assert "log_level" not in s.logs.model_fields_set
    assert s.workers.tool_modules == ["a.b", "c"]
    assert s.tenants.tenant_limits == {"capped": 3}
    assert s.llm.llm_api_key is None
    assert Settings().backend == "redis://elsewhere:6379/1"  # this process's own


def test_the_providers_file_is_parsed_once_and_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "providers.json"
    first = [{"name": "a", "base_url": "http://127.0.0.1:9/v1"}]
    path.write_text(json.dumps(first))
    settings = Settings(providers_file=path)
    read = settings.llm.provider_list
    assert [p.name for p in read] == ["a"]
    # Unchanged: the same objects, not a new parse (every LLM call reads the list).
    assert settings.llm.provider_list[0] is read[0]
    second = [*first, {"name": "b", "base_url": "http://127.0.0.1:9/v1"}]
    path.write_text(json.dumps(second))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a new modification time
    assert [p.name for p in settings.llm.provider_list] == ["a", "b"]
