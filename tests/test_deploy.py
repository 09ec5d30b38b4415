"""docker-compose.yml and ops/k8s/ run the commands the tests run, with settings that exist.

There is no Docker engine or cluster here: the files are parsed and each command, setting,
queue, probe and grace period is checked against the code (``ops.stack``, ``ops.deploy``).
The worker health check command runs for real against the session fleet.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentfleet.producer.api import app as api_app
from agentfleet.tasks.settings import FIELD_GROUPS, Settings
from agentfleet.workers import queues
from ops.deploy import SERVICE_POOLS, grace_seconds, node_name, ping_command, shutdown_env
from ops.stack import (
    DURABLE_REDIS,
    REPO,
    api_command,
    flower_command,
    simulator_command,
    worker_command,
)
from tests.conftest import Fleet

COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "ops" / "k8s"
#: Values for the variables the compose file requires.
REQUIRED = {"AGENTFLEET_LLM_API_KEY": "simulator", "AGENTFLEET_FLOWER_BASIC_AUTH": "ops:pw"}
#: Variables meant for something other than Settings.
NOT_SETTINGS = {"REMAP_SIGTERM", "REDIS_ADDRESS"}
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::(?P<op>[-?])(?P<arg>[^}]*))?\}")


def _interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` forms."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op == "?":
            raise LookupError(f"{name} is required: {arg}")
        return arg if op == "-" else ""

    return INTERPOLATION.sub(one, value)


def _settings(environment: Mapping[str, str], env: Mapping[str, str]) -> Settings:
    values = {
        k.removeprefix("AGENTFLEET_").lower(): _interpolate(str(v), env)
        for k, v in environment.items()
        if k.startswith("AGENTFLEET_")
    }
    return Settings(**{k: v for k, v in values.items() if v != ""})


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "api", "flower", "simulator", *SERVICE_POOLS}
    assert services["simulator"]["profiles"] == ["dev"]
    redis = " ".join(services["redis"]["command"])
    assert " ".join(DURABLE_REDIS) in redis
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name, service in services.items():
        if name not in ("redis", "simulator"):
            assert service["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_compose_commands_are_the_ones_the_tests_run(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["api"]["command"] == api_command("0.0.0.0", 8000, "info", python="python")
    assert services["flower"]["command"] == flower_command("python")
    assert services["simulator"]["command"] == simulator_command("0.0.0.0", 8799, python="python")
    for name, spec in SERVICE_POOLS.items():
        assert spec.queue in queues.ALL
        command = services[name]["command"]
        assert command == worker_command(spec, node_name(spec), python="python"), name
        ping = " ".join(ping_command(node_name(spec).replace("%h", "$$HOSTNAME")))
        assert services[name]["healthcheck"]["test"] == ["CMD-SHELL", ping], name


def test_compose_grace_periods_match_the_shutdown_settings(compose: dict[str, Any]) -> None:
    for name, spec in SERVICE_POOLS.items():
        service = compose["services"][name]
        settings = _settings(service["environment"], REQUIRED)
        assert service["stop_grace_period"] == f"{grace_seconds(spec, settings)}s", name
        extra = {k: v for k, v in service["environment"].items() if k in NOT_SETTINGS}
        assert extra == shutdown_env(spec), name


def test_compose_settings_exist_and_validate(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        for key in environment:
            field = key.removeprefix("AGENTFLEET_").lower()
            assert key in NOT_SETTINGS or field in FIELD_GROUPS, (name, key)
        if environment:
            _settings(environment, REQUIRED)  # raises if any value is invalid


def test_compose_requires_its_secrets(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]["environment"]
    agents = compose["services"]["worker-agents"]["environment"]
    for environment, key in (
        (flower, "AGENTFLEET_FLOWER_BASIC_AUTH"),
        (agents, "AGENTFLEET_LLM_API_KEY"),
    ):
        assert environment[key].startswith(f"${{{key}:?"), key
        with pytest.raises(LookupError, match=key):
            _interpolate(environment[key], {})
    # Nobody else gets the provider key.
    others = [s for n, s in compose["services"].items() if n != "worker-agents"]
    assert all("AGENTFLEET_LLM_API_KEY" not in (s.get("environment") or {}) for s in others)


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose is not installed here"
)
def test_compose_file_is_valid_for_docker_compose() -> None:
    env = {"PATH": "/usr/bin:/bin", **REQUIRED}
    done = subprocess.run(
        ["docker-compose", "--profile", "dev", "config", "-q"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    missing = subprocess.run(
        ["docker-compose", "config", "-q"],
        cwd=REPO,
        env={"PATH": env["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode != 0
    assert "AGENTFLEET_" in missing.stderr


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_k8s_workers(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    config = k8s[("ConfigMap", "agentfleet-config")]["data"]
    settings = _settings(config, {})
    for name, spec in SERVICE_POOLS.items():
        deployment = k8s[("Deployment", name)]
        pod = deployment["spec"]["template"]
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= pod["metadata"]["labels"].items()
        )
        container = _container(deployment)
        assert container["command"] == worker_command(spec, node_name(spec), "python"), name
        assert pod["spec"]["terminationGracePeriodSeconds"] == grace_seconds(spec, settings)
        env = _env(container)
        assert {k: v for k, v in env.items() if k in NOT_SETTINGS} == shutdown_env(spec)
        assert ("AGENTFLEET_LLM_API_KEY" in env) == (spec.queue == queues.AGENTS)
        probe = container["livenessProbe"]["exec"]["command"]
        ping = " ".join(ping_command(node_name(spec).replace("%h", "$HOSTNAME")))
        assert probe == ["sh", "-c", ping]

        scaler = k8s[("ScaledObject", name)]["spec"]
        assert scaler["scaleTargetRef"]["name"] == name
        (trigger,) = scaler["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == spec.queue
        assert trigger["metadata"]["addressFromEnv"] in config
        assert int(trigger["metadata"]["listLength"]) > 0


def test_k8s_api_and_flower(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    routes = set(api_app.openapi()["paths"])
    api = _container(k8s[("Deployment", "api")])
    assert api["command"] == api_command("0.0.0.0", 8000, "info", python="python")
    assert api["readinessProbe"]["httpGet"]["path"] in routes
    flower = _container(k8s[("Deployment", "flower")])
    assert flower["command"] == flower_command("python")
    env = _env(flower)
    assert env["AGENTFLEET_FLOWER_READ_ONLY"] == "true"
    assert env["AGENTFLEET_FLOWER_BASIC_AUTH"]["secretKeyRef"]["name"] == "agentfleet-secrets"
    assert flower["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    for name in ("api", "flower"):
        service = k8s[("Service", name)]["spec"]
        labels = k8s[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
        assert service["selector"].items() <= labels.items()
    for key in k8s[("ConfigMap", "agentfleet-config")]["data"]:
        assert key in NOT_SETTINGS or key.removeprefix("AGENTFLEET_").lower() in FIELD_GROUPS


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_worker_health_check_command(fleet: Fleet) -> None:
    node = next(n for n in fleet.stack.wait_workers(fleet.app, 3) if n.startswith("agents-"))
    env = fleet.stack.env()
    ok = subprocess.run(
        ping_command(node, python=sys.executable),
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    gone = subprocess.run(
        ping_command("agents@no-such-host", python=sys.executable),
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert gone.returncode != 0


def test_dockerfile_installs_the_packages_the_commands_import() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for package in ("client", "workers", "tasks", "producer", "ops"):
        assert f"COPY {package} ./{package}" in dockerfile
    # The fleet depends on agentfleet-client, which only its folder provides.
    assert "pip install ./client . " in dockerfile
    assert "USER agentfleet" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert not {"client", "workers", "tasks", "producer", "ops"} & set(ignored)
    assert Path(REPO / "README.md").exists()  # pyproject's readme, copied into the image
