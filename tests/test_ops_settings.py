"""Settings for logs, Flower and Redis Sentinel, what they turn into, and how the fleet's
processes (the demo's too) take them from the environment."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery
from pydantic import ValidationError

from agentfleet.tasks.redisconn import parse_sentinel_url
from agentfleet.tasks.settings import Settings
from agentfleet.workers.conf import celery_config
from ops.flower import ENV_BASIC_AUTH, ENV_READ_ONLY, FlowerConfigError, command
from ops.stack import REPO, PoolSpec, Stack

SENTINELS = "sentinel://:redispw@s1:26379/2;sentinel://s2:26380/2;sentinel://s3/2"


def test_log_level_and_format_are_validated() -> None:
    assert Settings(log_level="debug").logs.log_level == "DEBUG"
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
    assert config["broker_url"] == SENTINELS
    # The fleet's backend class, then the same URL (workers/fixes/result_backend.py).
    assert config["result_backend"].endswith(":FleetSentinelBackend+" + SENTINELS)
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
    assert argv[:6] == ["python", "-m", "celery", "-A", "agentfleet.workers", "flower"]
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


def test_the_stack_overrides_only_what_it_runs(tmp_path: Path) -> None:
    user = {
        "AGENTFLEET_TOOL_MODULES": "mytools",
        "AGENTFLEET_LLM_BASE_URL": "https://llm.example/v1",
        "agentfleet_redis_url": "redis://production:6379/0",  # read in any case
        "AGENTFLEET_BROKER_URL": "amqp://production//",
        "AGENTFLEET_RESULT_BACKEND": "redis://production:6379/1",
        "AGENTFLEET_SIMULATOR_URL": "http://127.0.0.1:8799/v1",
    }
    simulator = "http://127.0.0.1:8800/v1"
    stack = Stack(tmp_path, redis_url="redis://127.0.0.1:6390/0", user_env=user)
    stack.simulator_url = simulator
    assert {k: v for k, v in stack.env().items() if k.upper().startswith("AGENTFLEET_")} == {
        "AGENTFLEET_TOOL_MODULES": "mytools",
        "AGENTFLEET_LLM_BASE_URL": "https://llm.example/v1",
        "AGENTFLEET_REDIS_URL": "redis://127.0.0.1:6390/0",
        "AGENTFLEET_SIMULATOR_URL": simulator,
    }
    settings = stack.settings()
    assert settings.broker == settings.backend == "redis://127.0.0.1:6390/0"
    assert settings.workers.tool_modules == ["mytools"]
    # A configured provider: the demo starts no simulator, so it has no URL to override.
    assert not settings.llm.uses_simulator
    assert Settings.from_environ({}).llm.uses_simulator


def _fresh_env(**settings: str) -> dict[str, str]:
    """This environment without its agentfleet and demo variables, plus ``settings``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTFLEET_") and k not in ("REDIS_URL", "BROKER_URL")
    }
    return env | settings | {"PYTHONUNBUFFERED": "1"}


def _printed(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in the demo's output:\n{text}"
    return found[1]


@contextlib.contextmanager
def _serving(env: dict[str, str], tmp_path: Path, wait: Callable[..., None]) -> Iterator[str]:
    """``make serve`` (``python -m ops.demo --serve``) with ``env``: its output once the demo
    is done and the fleet stays up; SIGTERM, on which it stops its fleet, afterwards."""
    out = tmp_path / "demo.out"
    argv = [sys.executable, "-m", "ops.demo", "--serve", "--workdir", str(tmp_path / "fleet")]
    with out.open("wb") as sink:
        demo = subprocess.Popen(argv, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        up = "Ctrl-C stops it"
        wait(lambda: up in out.read_text() or demo.poll() is not None, 240, "the demo's fleet")
        assert demo.poll() is None, out.read_text()
        yield out.read_text()
    finally:
        demo.terminate()
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait(timeout=10)
    assert demo.returncode == 128 + signal.SIGTERM, out.read_text()


def test_serve_passes_the_users_settings_to_every_process(
    tmp_path: Path, wait: Callable[..., None]
) -> None:
    unreachable = "redis://127.0.0.1:1/0"
    with Stack(tmp_path / "provider") as provider:
        llm = provider.start_simulator()  # the user's LLM provider
        env = _fresh_env(
            AGENTFLEET_TOOL_MODULES="tests.tooling",
            AGENTFLEET_LLM_BASE_URL=llm,
            AGENTFLEET_REDIS_URL=unreachable,
            AGENTFLEET_BROKER_URL=unreachable,
            AGENTFLEET_RESULT_BACKEND=unreachable,
            AGENTFLEET_API_KEY="af_of_another_fleet",
            AGENTFLEET_FLOWER_ADDRESS="0.0.0.0",
            AGENTFLEET_TOOL_MODULE="tests.tooling",
        )
        with _serving(env, tmp_path, wait) as text:
            assert "all runs succeeded" in text
            api_url = _printed(r"AGENTFLEET_API_URL=([^\s;]+)", text)
            api_key = _printed(r"AGENTFLEET_API_KEY=([^\s;]+)", text)
            # The user's tool module is loaded by the API ...
            auth = {"Authorization": f"Bearer {api_key}"}
            tools = httpx.get(f"{api_url}/v1/tools", headers=auth).json()["tools"]
            assert "record_sleep" in {t["name"] for t in tools}
            # ... and by the tools worker, reached with the printed URLs like another service.
            broker = _printed(r'send_task: Celery\(broker="([^"]+)"', text)
            backend = _printed(r'backend="([^"]+)"\)', text)
            redis_url = _printed(r"AGENTFLEET_REDIS_URL=([^\s;]+)", text)
            assert broker == backend == redis_url != unreachable
            caller = Celery("caller", broker=broker, backend=backend)
            caller.conf.update(accept_content=["json"], result_accept_content=["json"])
            call = {"id": "c1", "name": "record_sleep", "arguments": {"key": "k", "seconds": 0}}
            reply = caller.send_task("agentfleet.tool.call", args=[call], queue="tools")
            output = reply.get(timeout=60)
            caller.close()
            assert output["ok"], output
            assert output["output"]["key"] == "k"
        # The runs went to the user's provider; the demo started no simulator of its own.
        assert httpx.get(llm.removesuffix("/v1") + "/_sim/stats").json()["requests"] > 0
    assert f"LLM providers from your settings: default {llm}" in text
    assert "starting redis, workers" in text
    assert not list((tmp_path / "fleet").glob("simulator-*"))
    # The demo says what it overrode, and names the misspelt variable with the right name.
    overridden = _printed(r"the demo overrides: (.+)", text).split(", ")
    assert overridden == [
        "AGENTFLEET_API_KEY",
        "AGENTFLEET_BROKER_URL",
        "AGENTFLEET_FLOWER_ADDRESS",
        "AGENTFLEET_REDIS_URL",
        "AGENTFLEET_RESULT_BACKEND",
    ]
    passed = _printed(r"your settings pass through: (.+)", text).split(", ")
    assert passed == [
        "AGENTFLEET_LLM_BASE_URL",
        "AGENTFLEET_TOOL_MODULE",
        "AGENTFLEET_TOOL_MODULES",
    ]
    assert "AGENTFLEET_TOOL_MODULE is not an agentfleet setting" in text
    assert "did you mean AGENTFLEET_TOOL_MODULES?" in text


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
        [sys.executable, "-m", "agentfleet.producer.cli", "--api", "http://127.0.0.1:1", "tools"],
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
