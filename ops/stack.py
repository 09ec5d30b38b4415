"""Bring up a whole fleet on this machine: Redis, the LLM simulator, a worker per pool, the API.

The demo, the tests and the bench all start their processes through :class:`Stack`, so what
the tests exercise is what users run: real ``redis-server``, real ``celery worker``
processes on the real queues, the API under uvicorn, all over real sockets.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import redis
from celery import Celery

from agentfleet.producer.auth import create_key
from agentfleet.tasks.models import DEFAULT_TENANT
from agentfleet.tasks.redisconn import get_redis
from agentfleet.tasks.settings import ENV_PREFIX, Settings
from agentfleet.workers.factory import create_app

REPO = Path(__file__).resolve().parent.parent
#: The run explorer's signing key (docs/operations.md, "Run explorer").
UI_SECRET = f"{ENV_PREFIX}UI_SECRET"


class StackError(RuntimeError):
    """A process of the stack could not be started."""


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Once: a second SIGTERM while the processes are being stopped must not cut that short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def user_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``AGENTFLEET_*`` variables of ``environ`` (any case, as :class:`Settings` reads
    them): the settings a user gives the fleet."""
    return {k: v for k, v in environ.items() if k.upper().startswith(ENV_PREFIX)}


def _claim(env: dict[str, str], name: str, value: str | None) -> None:
    """Set ``name`` in ``env`` to ``value`` (drop it when None), with any spelling of it in
    another case, which :class:`Settings` would read too."""
    for key in [k for k in env if k.upper() == name]:
        del env[key]
    if value is not None:
        env[name] = value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true; StackError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: S110  (not up yet: connection refused and the like)
            pass
        time.sleep(interval)
    raise StackError(f"timed out after {timeout}s waiting for {what}")


def ensure_redis_server() -> str:
    """Path of ``redis-server``; installs Debian's package when it is missing and we can."""
    found = shutil.which("redis-server")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("redis-server not found: installing it with apt-get ...", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env)
        found = shutil.which("redis-server")
        if found:
            return found
    raise StackError(
        "redis-server is not installed. Install it (Debian/Ubuntu: apt-get install redis-server; "
        "macOS: brew install redis) or set REDIS_URL to a running Redis."
    )


#: How the fleet's Redis runs in production (docs/design.md, "Redis: persistence and restarts"): the
#: append-only file, fsynced before each write is answered, so a crash of the host loses
#: nothing Redis acknowledged (a 202, a publish, a step's answer); no key is ever evicted.
#: docker-compose.yml runs it so (tests/test_deploy.py). The tests and the demo run a Redis
#: they throw away, without the file; ``python -m ops.bench --appendfsync`` measures the cost.
DURABLE_REDIS = (
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--maxmemory-policy",
    "noeviction",
)


@dataclass
class PoolSpec:
    """One worker process: which queue, which Celery pool, how many slots."""

    queue: str
    pool: str
    concurrency: int
    name: str = ""

    def node(self) -> str:
        return self.name or f"{self.queue}"


#: Pools of a fleet on a small machine (see docs/performance.md: the agents pool is the
#: threads pool because it sustained the most LLM calls in flight per core in the bench).
DEFAULT_POOLS = (
    PoolSpec("agents", "threads", 200),
    PoolSpec("tools", "prefork", 4),
    PoolSpec("batch", "prefork", 1),
)


# The command lines of the fleet's processes. docker-compose.yml and ops/k8s run the same
# ones (a test compares them), so what the tests start is what is deployed.


def worker_command(spec: PoolSpec, node: str, python: str = sys.executable) -> list[str]:
    """A ``celery worker`` for one pool."""
    return [
        *(python, "-m", "celery", "-A", "agentfleet.workers", "worker"),
        *("-Q", spec.queue, "-P", spec.pool, "-c", str(spec.concurrency), "-n", node),
        # Mingle and gossip cost a round of messages per worker; nothing here uses them.
        *("--without-mingle", "--without-gossip", "--loglevel", "INFO"),
    ]


def api_command(
    host: str, port: int, log_level: str = "warning", python: str = sys.executable
) -> list[str]:
    """The HTTP API under uvicorn."""
    return [
        *(python, "-m", "uvicorn", "agentfleet.producer.api:app"),
        *("--host", host, "--port", str(port), "--log-level", log_level),
    ]


def simulator_command(
    host: str,
    port: int,
    latency: float = 0.0,
    python: str = sys.executable,
    token_delay: float = 0.0,
) -> list[str]:
    """The LLM simulator."""
    return (
        [python, "-m", "agentfleet.simulator", "--host", host, "--port", str(port)]
        + (["--latency", str(latency)] if latency else [])
        + (["--token-delay", str(token_delay)] if token_delay else [])
    )


def flower_command(python: str = sys.executable) -> list[str]:
    """Flower, configured from the ``AGENTFLEET_FLOWER_*`` settings (ops/flower.py)."""
    return [python, "-m", "ops.flower"]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    """Processes of one fleet. Use as a context manager; everything stops on exit."""

    workdir: Path
    redis_url: str | None = None
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    simulator_url: str = ""
    api_url: str = ""
    #: A key of tenant ``default``, made when the API starts (see :meth:`make_api_key`).
    api_key: str = ""
    flower_url: str = ""
    #: Celery broker, when not the stack's Redis (e.g. ``amqp://`` for RabbitMQ).
    broker_url: str | None = None
    #: The user's ``AGENTFLEET_*`` settings (:func:`user_settings`), passed to every process
    #: under what the stack sets itself. Empty unless given: the tests and the bench must not
    #: depend on the environment they are started from; the demo passes the user's.
    user_env: Mapping[str, str] = field(default_factory=dict)
    #: Variables of :attr:`user_env` that some process was started without, or with another
    #: value (the stack's Redis, simulator, API, Flower's address, ...).
    overridden: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Stack:
        # The processes run in their own sessions, so a SIGTERM to this one alone would leave
        # them behind: turn it into an ordinary exit, which stops them on the way out.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- processes -----------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment every fleet process gets: this process's without its
        ``AGENTFLEET_*`` variables, then :attr:`user_env`, then what the stack runs (its
        Redis as the store, broker and result backend; its simulator, API and broker when
        started or given), then :attr:`env_overrides`."""
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
        env |= self.user_env
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        if self.redis_url:
            _claim(env, "AGENTFLEET_REDIS_URL", self.redis_url)
            _claim(env, "AGENTFLEET_RESULT_BACKEND", None)
            _claim(env, "AGENTFLEET_BROKER_URL", self.broker_url)
        elif self.broker_url:
            _claim(env, "AGENTFLEET_BROKER_URL", self.broker_url)
        if self.simulator_url:
            _claim(env, "AGENTFLEET_SIMULATOR_URL", self.simulator_url)
        if self.api_url:
            _claim(env, "AGENTFLEET_API_URL", self.api_url)
        if self.api_key:
            _claim(env, "AGENTFLEET_API_KEY", self.api_key)
        env.update(self.env_overrides)
        return env

    def settings(self) -> Settings:
        """The settings the fleet's processes run with."""
        return Settings.from_environ(self.env())

    def celery_app(self) -> Celery:
        """A Celery app configured like the fleet's (for pings, results, send_task)."""
        return create_app(self.settings())

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Proc:
        log_path = self.workdir / f"{name}.log"
        env = dict(env or self.env())
        self.overridden |= {k for k, v in self.user_env.items() if env.get(k) != v}
        log: IO[bytes] = log_path.open("ab")
        popen = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our signals reach the whole process group
        )
        log.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def start_redis(self, extra_args: list[str] | None = None) -> str:
        """A private ``redis-server`` on a free port, unless ``redis_url`` was given."""
        if self.redis_url:
            return self.redis_url
        binary = ensure_redis_server()
        port = free_port()
        data = self.workdir / "redis"
        data.mkdir(exist_ok=True)
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data),
            "--maxmemory-policy",
            "noeviction",
            *(extra_args or []),
        ]
        self.spawn("redis", argv)
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        wait_for(lambda: bool(client.ping()), 15, "redis-server")
        client.close()
        self.redis_url = url
        return url

    def restart_redis(self) -> None:
        """Stop the stack's ``redis-server`` cleanly (SIGTERM: it writes its append-only file)
        and start it again on the same port and directory, in the dead one's place in the
        stack (so that it is still stopped after the workers)."""
        victim = next(p for p in self.procs if p.name == "redis" and p.alive())
        self.kill(victim, signal.SIGTERM)
        victim.popen.wait(timeout=20)
        argv = victim.popen.args
        assert isinstance(argv, list)  # spawn() started it with a list
        revived = self.spawn("redis", [str(arg) for arg in argv])
        self.procs.remove(revived)
        self.procs[self.procs.index(victim)] = revived
        client = redis.Redis.from_url(self.redis_url or "", socket_connect_timeout=1)
        wait_for(lambda: bool(client.ping()), 30, "redis-server to come back")
        client.close()

    def start_simulator(
        self, latency: float = 0.0, port: int | None = None, token_delay: float = 0.0
    ) -> str:
        """The simulator on a free port (or ``port``); ``token_delay``: seconds between the
        chunks of a streamed answer."""
        port = port or free_port()
        argv = simulator_command("127.0.0.1", port, latency, token_delay=token_delay)
        self.spawn(f"simulator-{port}", argv)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/healthz").status_code == 200, 20, "the simulator")
        self.simulator_url = f"{base}/v1"
        return self.simulator_url

    def start_worker(self, spec: PoolSpec, env: Mapping[str, str] | None = None) -> Proc:
        node = f"{spec.node()}-{len(self.procs)}@%h"
        argv = worker_command(spec, node)
        return self.spawn(f"worker-{spec.node()}-{len(self.procs)}", argv, env)

    def make_api_key(self, tenant: str = DEFAULT_TENANT) -> str:
        """A new API key of ``tenant``, stored (hashed) in the fleet's Redis."""
        settings = self.settings()
        return create_key(get_redis(settings), settings, tenant)

    def start_api(self, port: int | None = None, log_level: str = "warning") -> str:
        if not self.api_key:
            self.api_key = self.make_api_key()
        port = port or free_port()
        argv = api_command("127.0.0.1", port, log_level)
        env = self.env()
        if not any(k.upper() == UI_SECRET for k in env):
            # The run explorer (/ui) needs a signing key; a fresh one per stack.
            _claim(env, UI_SECRET, secrets.token_urlsafe(32))
        self.spawn(f"api-{port}", argv, env)
        self.api_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{self.api_url}/healthz").status_code == 200, 30, "the API")
        return self.api_url

    def start_flower(
        self,
        port: int | None = None,
        basic_auth: str | None = None,
        read_only: bool | None = None,
    ) -> str:
        """Flower on loopback through ``python -m ops.flower``; its URL once it answers.
        ``basic_auth`` and ``read_only`` left None keep what the environment says."""
        port = port or free_port()
        env = self.env()
        _claim(env, "AGENTFLEET_FLOWER_PORT", str(port))
        _claim(env, "AGENTFLEET_FLOWER_ADDRESS", "127.0.0.1")
        if read_only is not None:
            _claim(env, "AGENTFLEET_FLOWER_READ_ONLY", "true" if read_only else "false")
        if basic_auth:
            _claim(env, "AGENTFLEET_FLOWER_BASIC_AUTH", basic_auth)
        proc = self.spawn(f"flower-{port}", flower_command(), env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if not proc.alive():
                raise StackError(f"Flower exited:\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthcheck").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise StackError(f"Flower did not answer within 30s:\n{proc.tail()}")
            time.sleep(0.1)
        self.flower_url = url
        return url

    def wait_workers(self, app: Any, count: int, timeout: float = 60.0) -> list[str]:
        """Wait until ``count`` workers answer a broadcast ping; returns their node names."""
        seen: list[str] = []

        def enough() -> bool:
            replies = app.control.ping(timeout=0.5) or []
            seen[:] = [name for reply in replies for name in reply]
            return len(seen) >= count

        try:
            wait_for(enough, timeout, f"{count} workers", interval=0.2)
        except StackError:
            dead = [p for p in self.procs if not p.alive()]
            detail = "\n".join(f"--- {p.name} exited:\n{p.tail()}" for p in dead)
            raise StackError(f"only {len(seen)}/{count} workers answered\n{detail}") from None
        return seen

    def start_fleet(
        self,
        pools: tuple[PoolSpec, ...] = DEFAULT_POOLS,
        llm_latency: float = 0.0,
        simulator: bool = True,
    ) -> None:
        """Redis, the simulator (unless ``simulator`` is false), one worker per pool, the API."""
        self.start_redis()
        if simulator:
            self.start_simulator(latency=llm_latency)
        for spec in pools:
            self.start_worker(spec)
        self.start_api()

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        """Signal a process's whole group (a prefork worker and its children)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, sig)

    def stop(self) -> None:
        """Stop every process: SIGTERM, then SIGKILL whatever is still up after 10 s."""
        for proc in reversed(self.procs):
            if proc.alive():
                self.kill(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill(proc, signal.SIGKILL)
                proc.popen.wait(timeout=5)
        self.procs.clear()
