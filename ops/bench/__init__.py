"""Measure agentfleet against stock Celery on one private Redis: ``python -m ops.bench``.

Seven sections, each compared with a baseline measured in the same run (machines of this kind
are noisy, so read the ratios, not the absolute numbers):

``a`` latency
    Sequential round trips: plain ``noop.apply_async().get()`` against a one-step run
    (``submit_run`` then ``AsyncResult(run_id).get()``), zero-latency simulator.
``b`` throughput
    A backlog enqueued while no worker runs, then drained on the same cores: plain no-op
    tasks/s against one-step runs (agent steps)/s, for several ``agents`` pools.
``c`` concurrency
    Two-step runs at 2 s of LLM latency (step 1 asks for a ``text_stats`` call, step 2
    answers): effective concurrency = total LLM wait / wall time, for each ``agents`` pool.

In (b) and (c) the fleet runs whole: ``agents``, ``tools`` and ``batch`` workers, and runs are
submitted through the API (``--submit direct``: ``submit_run`` in the bench's process). The
CPU of every process tree (``/proc/<pid>/stat``, utime + stime, children included) is read
before and after the measured window and reported per role: the ``agents``, ``tools`` and
``batch`` workers, the API, Redis, the simulator and the bench's own process (the load
generator). A configuration's own CPU is that of its workers, API and Redis; the simulator
stands for a remote provider, and its CPU per LLM request is reported on its own.
``--llm-transport aiohttp,httpx`` runs each fleet configuration of (b) and (c) on each
transport in turn, for paired figures in one run.
``d`` accept
    Runs accepted per second with no worker running, from concurrent clients: ``POST
    /v1/runs`` through the API (one and two uvicorn processes) and ``submit_run`` in process,
    against Celery's own ``apply_async`` of the entry task ``agentfleet.run``.
``e`` chord
    A run whose model asks for 100 tool calls at once (a chord of 100 ``agentfleet.tool.call``
    tasks and the next step as its body) against a plain Celery chord of 100 no-ops and a
    collecting body, each on a prefork 1x2 worker.
``f`` memory
    Runs parked on a slow LLM call (the simulator waits): Redis ``used_memory`` and the
    ``agents`` workers' RSS per run in flight, the first time (threads and connections are
    made) and again (they are reused).
``g`` features
    One-step runs through ``POST /v1/runs`` by agent name, by a typed agent's name, on a
    thread with history, answered from the response cache, and with a run and a tenant
    budget: CPU per run and p50 round trip, each against an ad-hoc run, in rounds.

Every configuration gets its own Redis database, so work a failed configuration leaves behind
(a timeout, a dead worker) cannot leak into the next one. That Redis keeps no append-only file
unless ``--appendfsync`` asks for one: ``always`` is how production runs it (an fsync before each
write is answered, ``ops.stack.DURABLE_REDIS``), ``everysec`` the cheaper setting that a crash
of the host can cost the last second of. Every process is started through
:class:`~ops.stack.Stack` and stopped when the bench ends; every wait has a deadline.

Each section is a module of this package (``latency``, ``throughput``, ``concurrency``,
``accept``, ``chord``, ``memory``, ``features``) with a ``measure(bench)`` and a
``report(rows)``; ``_common`` (sizes, pools, tables), ``_meters`` (CPU, items followed to their
end) and ``_stack`` (the processes under test) hold what they share, ``agents`` the agents
section (g) runs by name, and ``__main__`` is the command line.

Usage::

    python -m ops.bench [--quick] [--only a,b,c,d,e,f,g] [--pools gevent,threads,prefork]
                        [--appendfsync no|everysec|always] [--submit api|direct]
                        [--llm-transport aiohttp,httpx] [--json out.json]
"""
