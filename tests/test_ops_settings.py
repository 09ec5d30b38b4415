"""Settings for logs, Flower and Redis Sentinel, what they turn into, and how the fleet's
processes (the demo's too) take them from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from ops.flower import ENV_BASIC_AUTH, ENV_READ_ONLY, FlowerConfigError, command
from ops.stack import REPO, PoolSpec, Stack
from tasks.redisconn import parse_sentinel_url
from workers.conf import celery_config
from workers.settings import Settings

SENTINELS = "sentinel://:redispw@s1:26379/2;sentinel://s2:26380/2;sentinel://s3/2"


def test_log_level_and_format_are_validated() -> None:
    assert Settings(log_level="debug").log_level == "DEBUG"
    with pytest.raises(ValidationError, match="unknown log level"):
        Settings(log_level="chatty")
    with pytest.raises(ValidationError):
        Settings(log_format="xml")  # type: ignore[arg-type]


def test_sentinel_urls_need_a_master_name() -> None:
    with pytest.raises(ValidationError, match="AGENTFLEET_REDIS_SENTINEL_MASTER"):
        Settings(broker_url=SENTINELS)


def test_sentinel_transport_options_for_broker_and_backend() -> None:
    settings = Settings(
        redis_url=SENTINELS,
        redis_sentinel_master="agentfleet",
        redis_sentinel_password="sentinelpw",
    )
    config = celery_config(settings)
    assert config["broker_url"] == config["result_backend"] == SENTINELS
    for key in ("broker_transport_options", "result_backend_transport_options"):
        options = config[key]
        assert options["master_name"] == "agentfleet"
        assert options["sentinel_kwargs"] == {"password": "sentinelpw"}


def test_no_sentinel_options_for_plain_redis() -> None:
    options = celery_config(Settings())["broker_transport_options"]
    assert "master_name" not in options
    assert "sentinel_kwargs" not in options


def test_parse_sentinel_url() -> None:
    hosts, password, db = parse_sentinel_url(SENTINELS)
    assert hosts == [("s1", 26379), ("s2", 26380), ("s3", 26379)]
    assert password == "redispw"
    assert db == 2
    with pytest.raises(ValueError, match="not a sentinel"):
        parse_sentinel_url("redis://localhost:6379/0")


def test_flower_command_passes_secrets_in_the_environment() -> None:
    settings = Settings(flower_basic_auth="ops:pw", flower_read_only=True, flower_port=5600)
    argv, env = command(settings, ["--max_tasks=500"], python="python")
    assert argv[:6] == ["python", "-m", "celery", "-A", "workers", "flower"]
    assert "--port=5600" in argv
    assert argv[-1] == "--max_tasks=500"
    assert not any("ops:pw" in a for a in argv)
    assert env == {ENV_BASIC_AUTH: "ops:pw", ENV_READ_ONLY: "true"}


def test_flower_refuses_to_listen_off_loopback_without_auth() -> None:
    with pytest.raises(FlowerConfigError, match="without AGENTFLEET_FLOWER_BASIC_AUTH"):
        command(Settings(flower_address="0.0.0.0"))
    argv, env = command(Settings(flower_address="::1"))
    assert "--address=::1" in argv
    assert ENV_BASIC_AUTH not in env
    argv, _ = command(Settings(flower_address="0.0.0.0", flower_basic_auth="a:b"))
    assert argv[0] == sys.executable


def _fresh_env(**settings: str) -> dict[str, str]:
    """This environment without its agentfleet and demo variables, plus ``settings``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTFLEET_") and k not in ("REDIS_URL", "BROKER_URL")
    }
    return env | settings | {"PYTHONUNBUFFERED": "1"}


def test_workers_the_api_and_the_cli_name_a_misspelt_variable(
    tmp_path: Path, wait: Callable[..., None]
) -> None:
    typo = {"AGENTFLEET_TOOL_MODULE": "tests.tooling"}
    said = "AGENTFLEET_TOOL_MODULE is not an agentfleet setting"
    closest = "did you mean AGENTFLEET_TOOL_MODULES?"
    with Stack(tmp_path, env_overrides=typo) as stack:
        stack.start_redis()
        worker = stack.start_worker(PoolSpec("batch", "prefork", 1))
        stack.start_api()
        api = next(p for p in stack.procs if p.name.startswith("api-"))
        stack.wait_workers(stack.celery_app(), 1)
        for proc in (worker, api):
            wait(lambda proc=proc: said in proc.tail(200), 30, f"the warning in {proc.name}")
            assert closest in proc.tail(200)
            assert proc.alive()
    cli = subprocess.run(
        [sys.executable, "-m", "producer.cli", "--api", "http://127.0.0.1:1", "tools"],
        cwd=REPO,
        env=_fresh_env(**typo),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert said in cli.stderr
    assert closest in cli.stderr
    assert cli.returncode == 3  # the CLI still ran: it could not reach the API
