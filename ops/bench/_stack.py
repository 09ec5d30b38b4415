"""What a bench runs on: the fleet and the baseline, on a private Redis and simulator."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
from celery import Celery

from agentfleet.producer.auth import create_key
from agentfleet.tasks import intake
from agentfleet.tasks.models import DEFAULT_TENANT, RunRequest
from agentfleet.tasks.redisconn import get_redis
from agentfleet.tasks.setting_groups import RedisSettings
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.store import RunStore
from agentfleet.workers.conf import celery_config
from agentfleet.workers.factory import create_app
from ops import bench_plain
from ops.bench._common import BATCH_POOL, ONE_STEP_PROMPT, TOOLS_POOL, AgentsPool, Sizes
from ops.bench._meters import CpuMeter, Tracker, enqueue_many, run_probe
from ops.stack import PoolSpec, Proc, Stack, StackError, free_port, wait_for

#: Redis databases for the per-configuration isolation described in the module docstring.
REDIS_DATABASES = 64
#: A worker gets this long to finish its tasks on SIGTERM before its group is killed.
STOP_GRACE_S = 15.0


def _routine(line: str) -> bool:
    # Celery logs every task ignored and succeeded at INFO (and, at DEBUG, every one received).
    if "INFO/" not in line:
        return False
    return " succeeded in " in line or line.rstrip().endswith((" received", " ignored"))


def log_tail(proc: Proc, lines: int, width: int = 240) -> str:
    """The last ``lines`` lines of a log that are not routine task chatter, cut to ``width``.

    What explains a failure (warnings, errors, tracebacks) is otherwise buried under the
    one-line-per-task INFO records of a busy worker.
    """
    try:
        text = proc.log.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    kept = [line[:width] for line in text if not _routine(line)]
    return "\n".join(kept[-lines:])


# --- the fleet and the baseline under test -------------------------------------------------------
def plain_producer(url: str) -> Celery:
    """The bench's producer for the baseline: :func:`ops.bench_plain.create_app` on ``url``.

    kombu keeps one process-wide limit for every app's connection pools and refuses to shrink
    a pool in use, so this producer takes agentfleet's ``broker_pool_limit`` instead of
    Celery's default of 10. Only the bench's own publishing is affected: the baseline worker
    runs the stock app.
    """
    app = bench_plain.create_app(url)
    app.conf.broker_pool_limit = celery_config(Settings())["broker_pool_limit"]
    return app


@dataclass
class Fleet:
    """The producer side of agentfleet on one Redis database, as the API holds it."""

    settings: Settings
    app: Celery
    store: RunStore

    @classmethod
    def connect(cls, url: str) -> Fleet:
        """A Celery app and a run store on ``url``."""
        settings = Settings(redis=RedisSettings(redis_url=url))
        return cls(settings, create_app(settings), RunStore(get_redis(settings), settings))

    def submit(self, prompt: str) -> str:
        """Create a run and enqueue its first step; the run ID."""
        run = intake.admit_run(RunRequest(input=prompt), self.settings, check_callback=True)
        return intake.submit_run(self.app, self.store, run, DEFAULT_TENANT)

    def close(self) -> None:
        """Release the broker and result-backend connections."""
        self.app.close()


class HttpSubmitter:
    """``POST /v1/runs`` with one kept-alive connection per calling thread; calling it submits
    ``prompt``."""

    def __init__(self, base_url: str, api_key: str, prompt: str = ONE_STEP_PROMPT) -> None:
        self.base_url = base_url
        self.prompt = prompt
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self._local = threading.local()
        self._clients: list[httpx.Client] = []

    def __call__(self) -> str:
        return self.post(self.prompt)

    def post(self, prompt: str) -> str:
        """Submit a run of ``prompt``; its ID."""
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(
                base_url=self.base_url, timeout=30, headers=self.headers
            )
            self._clients.append(client)
        response = client.post("/v1/runs", json={"input": prompt})
        if response.status_code != 202:
            raise StackError(f"POST /v1/runs answered {response.status_code}: {response.text}")
        return str(response.json()["id"])

    def close(self) -> None:
        """Close every thread's connection."""
        for client in self._clients:
            client.close()


def start_api(
    bench: Bench, url: str, processes: int, env: Mapping[str, str] | None = None
) -> tuple[Proc, str]:
    """The producer API on database ``url`` with ``processes`` uvicorn workers; ``env``:
    settings of the configuration's own."""
    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", "agentfleet.producer.api:app", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning", "--workers", str(processes),
    ]  # fmt: skip
    proc = bench.stack.spawn(
        f"api-{port}", argv, {**bench.stack.env(), "AGENTFLEET_REDIS_URL": url, **(env or {})}
    )
    base_url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base_url}/healthz").status_code == 200, 60, "the API")
    return proc, base_url


#: How sections (b) and (c) submit the fleet's runs (``--submit``): ``api`` POSTs them to the
#: producer API (one uvicorn process, whose CPU is the fleet's), ``direct`` calls
#: ``submit_run`` in the bench's own process (what the API does, without HTTP).
SUBMIT_PATHS = ("api", "direct")


@dataclass
class Submission:
    """How a configuration's runs are submitted, and the API process when there is one."""

    submit: Callable[[str], str]
    api: list[Proc]

    def runs_of(self, prompt: str) -> Callable[[], str]:
        """A submitter of ``prompt`` for :func:`enqueue_many`."""
        return lambda: self.submit(prompt)


class Bench:
    """One bench run: a private Redis and simulator, then the sections asked for."""

    def __init__(
        self,
        stack: Stack,
        sizes: Sizes,
        families: Sequence[str],
        appendfsync: str = "no",
        submit_via: str = "api",
        transports: Sequence[str] = (),
    ) -> None:
        self.stack = stack
        self.sizes = sizes
        self.families = families
        self.appendfsync = appendfsync
        self.submit_via = submit_via
        #: LLM transports sections (b) and (c) measure each fleet configuration on, in turn
        #: (``--llm-transport``); none: the fleet's default.
        self.transports = tuple(transports)
        self.redis_base = ""
        self.simulator_base = ""
        self._next_db = 0

    def start(self) -> None:
        """Start Redis and the zero-latency simulator that every section shares."""
        aof = [] if self.appendfsync == "no" else ["--appendonly", "yes"]
        aof += [] if self.appendfsync == "no" else ["--appendfsync", self.appendfsync]
        url = self.stack.start_redis(["--databases", str(REDIS_DATABASES), *aof])
        self.redis_base = url.rsplit("/", 1)[0]
        self.simulator_base = self.stack.start_simulator(latency=0.0).removesuffix("/v1")

    # --- processes ---------------------------------------------------------------------------
    def fresh_db(self) -> str:
        """The URL of a Redis database no configuration has used yet."""
        self._next_db += 1
        if self._next_db >= REDIS_DATABASES:
            raise StackError(f"more than {REDIS_DATABASES - 1} configurations in one run")
        return f"{self.redis_base}/{self._next_db}"

    def _named(self, prefix: str) -> list[Proc]:
        return [p for p in self.stack.procs if p.name.startswith(prefix)]

    def on_each_transport(self, pools: Sequence[AgentsPool]) -> list[AgentsPool]:
        """``pools``, each once per transport of :attr:`transports`, in turn (as they are
        when none was asked for)."""
        if not self.transports:
            return list(pools)
        return [replace(p, transport=t) for p in pools for t in self.transports]

    def start_agents(
        self, url: str, agents: AgentsPool, env: Mapping[str, str] | None = None
    ) -> list[Proc]:
        """The ``agents`` worker processes of a configuration, on database ``url``; ``env``:
        settings of the configuration's own."""
        transport = {"AGENTFLEET_LLM_TRANSPORT": agents.transport} if agents.transport else {}
        env = {**self.stack.env(), "AGENTFLEET_REDIS_URL": url, **transport, **(env or {})}
        spec = PoolSpec("agents", agents.pool, agents.concurrency)
        return [self.stack.start_worker(spec, env) for _ in range(agents.processes)]

    def start_tools(self, url: str, env: Mapping[str, str] | None = None) -> Proc:
        """The ``tools`` worker of a configuration, on database ``url`` (``env`` as for
        :meth:`start_agents`)."""
        return self.stack.start_worker(
            TOOLS_POOL, {**self.stack.env(), "AGENTFLEET_REDIS_URL": url, **(env or {})}
        )

    def start_batch(self, url: str) -> Proc:
        """The ``batch`` worker of a configuration, on database ``url``: a fleet runs one
        whatever its runs do, so its CPU is the fleet's."""
        return self.stack.start_worker(
            BATCH_POOL, {**self.stack.env(), "AGENTFLEET_REDIS_URL": url}
        )

    @contextmanager
    def submission(self, fleet: Fleet, procs: list[Proc]) -> Iterator[Submission]:
        """How runs reach ``fleet`` in this bench (:data:`SUBMIT_PATHS`): with ``api``, an API
        process on its database is started (and added to ``procs``, to be stopped with them)."""
        if self.submit_via != "api":
            yield Submission(lambda prompt: fleet.submit(prompt), [])
            return
        api, base_url = start_api(self, fleet.settings.redis.redis_url, 1)
        procs.append(api)
        key = create_key(fleet.store.redis, fleet.settings, "bench")
        http = HttpSubmitter(base_url, key)
        try:
            yield Submission(http.post, [api])
        finally:
            http.close()

    def start_plain(
        self,
        url: str,
        pool: str = "prefork",
        concurrency: int = 2,
        queue: str = bench_plain.QUEUE,
        transport: str = "",
    ) -> Proc:
        """A stock Celery worker for :mod:`ops.bench_plain` on database ``url``; ``transport``
        ``aiohttp``: its LLM calls go through one aiohttp event loop (else the sync SDK)."""
        env = {
            **self.stack.env(),
            bench_plain.URL_ENV: url,
            bench_plain.LLM_URL_ENV: f"{self.simulator_base}/v1",
            bench_plain.LLM_TRANSPORT_ENV: transport,
        }
        argv = [
            sys.executable, "-m", "celery", "-A", "ops.bench_plain", "worker",
            "-P", pool, "-c", str(concurrency), "-Q", queue,
            "-n", f"plain-{len(self.stack.procs)}@%h",
            # The flags Stack gives agentfleet's workers, so both log and start alike.
            "--without-mingle", "--without-gossip", "--loglevel", "INFO",
        ]  # fmt: skip
        return self.stack.spawn(f"worker-plain-{len(self.stack.procs)}", argv, env)

    def stop(self, procs: Sequence[Proc]) -> None:
        """Stop workers of one configuration: SIGTERM (warm shutdown), SIGKILL after a grace."""
        for proc in procs:
            if proc.alive():
                self.stack.kill(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            try:
                proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.stack.kill(proc, signal.SIGKILL)
                proc.popen.wait(timeout=5)

    @contextmanager
    def workers(self, procs: list[Proc]) -> Iterator[list[Proc]]:
        """Stop ``procs`` (and any added to the list inside the block) when the block ends."""
        try:
            yield procs
        finally:
            self.stop(procs)

    def meter(self, groups: dict[str, Sequence[Proc]]) -> CpuMeter:
        """A CPU meter over ``groups`` plus Redis and the simulator (and the bench's own
        process, the load generator, as ``bench``)."""
        return CpuMeter({**groups, "redis": self._named("redis"), "sim": self._named("simulator")})

    def simulator_stats(self, reset: bool = False) -> dict[str, Any]:
        """The simulator's request counters (``max_in_flight`` and so on); zeroed if ``reset``."""
        if reset:
            return dict(httpx.post(f"{self.simulator_base}/_sim/reset", timeout=5).json())
        return dict(httpx.get(f"{self.simulator_base}/_sim/stats", timeout=5).json())

    def log_tails(self, procs: Sequence[Proc], lines: int = 12) -> str:
        """The end of each process's log, for a configuration that failed."""
        return "\n".join(f"--- {p.name} ({p.log}):\n{log_tail(p, lines)}" for p in procs)

    def wait_runs(
        self,
        fleet: Fleet,
        prompt: str,
        count: int,
        procs: Sequence[Proc],
        timeout: float,
        submit: Callable[[], str] | None = None,
    ) -> Tracker:
        """Submit ``count`` runs of ``prompt`` (with ``submit`` if given) and wait for them all
        (warm-ups)."""
        ids, _ = enqueue_many(submit or (lambda: fleet.submit(prompt)), count, timeout)
        tracker = Tracker(ids, run_probe(fleet.store))
        problem = tracker.wait(time.monotonic() + timeout, procs)
        if problem:
            raise StackError(f"warm-up: {problem}")
        return tracker
