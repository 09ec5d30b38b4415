"""The Lua scripts behind :mod:`agentfleet.tasks.store`: every transition of a run in one round
trip. Each is a file in ``tasks/lua/`` whose header gives its KEYS, ARGV and reply.

Each script takes a context JSON as ``ARGV[1]``: ``now``, ``prefix`` (the key prefix),
``ttl`` (record lifetime), ``maxlen`` (event stream bound) and ``run_id``. A transition that
matters to a watcher appends its event to ``<p>:run:<id>:events`` in the same script, so the
stream's order is the order of the transitions and nothing is recorded without its event.

Keys derived inside the scripts (tenant slots, batches, metrics) are built from ``prefix``:
the store runs on one Redis, not a cluster.

The fleet's metrics of runs and steps (:mod:`agentfleet.tasks.metrics`) are counted by the
transitions that make them true, in the same round trip: a run when it is created and when it
becomes final (also per agent), a step when its answer is applied (its usage also per agent).

A transition never builds on state that a crash of Redis rolled back. A crash can lose the
last writes (``appendfsync everysec``, an asynchronous replica promoted) while workers still
hold what they read before it: a step's tool results, a tool call of a step's answer. Each
applied answer records its generation, ``gen:<step>`` (the token of the claim that applied it,
unique: a step that answers again after a rollback gets a new one); tool calls carry the
generation they were asked in, and their results bring it back. A step whose predecessor's
answer is gone (``rolled_back``), a tool call or result of another generation (``stale``) and
an answer built on one are refused, and the run is made due at once for the watchdog, which
sends what the record says is next.
"""

from __future__ import annotations

from agentfleet.tasks.keys import MetricKeys
from agentfleet.tasks.luafiles import script
from agentfleet.tasks.metrics import RUN_BUCKETS, format_bound

#: The run-latency buckets as a Lua table of {upper bound, field name}.
_RUN_BUCKETS_LUA = "{" + ", ".join(f"{{{b!r}, '{format_bound(b)}'}}" for b in RUN_BUCKETS) + "}"
#: The metric keys the scripts write, after ``prefix``: named in agentfleet.tasks.keys.
_SUFFIX = MetricKeys("")
_METRIC_KEYS_LUA = (
    f"{{runs = '{_SUFFIX.runs}', run_seconds = '{_SUFFIX.run_seconds}', "
    f"step_seconds = '{_SUFFIX.step_seconds}', llm = '{_SUFFIX.llm}', "
    f"agent_runs = '{_SUFFIX.agent_runs}', agent_usage = '{_SUFFIX.agent_usage}'}}"
)
_PACKAGE = "agentfleet.tasks"
_FILL = {"RUN_BUCKETS": _RUN_BUCKETS_LUA, "METRIC_KEYS": _METRIC_KEYS_LUA}


def _load(name: str, *parts: str) -> str:
    """``lua/<name>.lua`` after ``_common.lua`` and ``parts``."""
    return script(_PACKAGE, name, ("_common", *parts), _FILL)


CREATE_RUN = _load("create_run", "_activate")
ACCEPT = _load("accept", "_activate")
BEGIN_STEP = _load("begin_step")
APPLY_STEP = _load("apply_step", "_spend", "_step_end")
FINISH_STEP = _load("finish_step", "_spend", "_step_end")
APPLY_AND_FINISH_STEP = _load("apply_and_finish_step", "_spend", "_step_end")
CANCEL_RUN = _load("cancel_run")
WAIT_STEP = _load("wait_step", "_spend", "_step_end")
DECIDE = _load("decide")
RELEASE_STEP = _load("release_step")
#: Takes no context argument: it is the only script that is not a transition of a record.
DROP_LEASE = script(_PACKAGE, "drop_lease")
CREATE_TOOL = _load("create_tool")
BEGIN_TOOL = _load("begin_tool", "_stale")
COMPLETE_TOOL = _load("complete_tool", "_stale")
CANCEL_TOOL = _load("cancel_tool")
#: A tenant's daily budget (agentfleet.tasks.spend): not transitions of a record either.
RESERVE_SPEND = script(_PACKAGE, "reserve_spend")
SETTLE_SPEND = script(_PACKAGE, "settle_spend", ("_spend",))
