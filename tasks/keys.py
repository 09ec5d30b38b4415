"""Every Redis key the fleet uses, named in one place.

``p`` is the key prefix (``AGENTFLEET_KEY_PREFIX``, ``af`` by default): one prefix per fleet,
so fleets can share a Redis. No other module spells a key; ``tests/test_keys.py`` fails on one
that does, and checks the strings below against the layout that is on disk in running fleets.

The Lua scripts (``tasks/lua/*.lua``) build some of these keys from the prefix, or from a key
they are given (active runs, tenant slots, batches, a run's events, per-step fields):
:data:`LUA_SPELLED` lists every fragment they spell, and the test checks both that the scripts
spell no other and that each is part of a key named here. Celery's own keys
(``celery-task-meta-<id>``, the broker's queues) are Celery's and are not listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: The prefix of a fleet that does not set ``AGENTFLEET_KEY_PREFIX`` (the Settings default).
DEFAULT_PREFIX: Final = "af"

# --- runs ------------------------------------------------------------------------------------
#: The part after the prefix of every run record (``<p>:run:<id>``).
RUN_SEGMENT = ":run:"
#: The part after the prefix of the sorted set of unfinished runs.
ACTIVE_RUNS_SEGMENT = ":runs:active"


def run_prefix(p: str) -> str:
    """What every run record's key starts with: the run ID follows."""
    return f"{p}{RUN_SEGMENT}"


def run(p: str, run_id: str) -> str:
    """Hash: a run's record (status, step counters, usage, timestamps, result, error)."""
    return f"{run_prefix(p)}{run_id}"


def run_children(p: str, run_id: str) -> str:
    """Set: the IDs of a run's child runs (sub-agent calls; expires with the run)."""
    return f"{run_prefix(p)}{run_id}:children"


def run_messages(p: str, run_id: str) -> str:
    """List: a run's transcript, one JSON message per entry."""
    return f"{run(p, run_id)}:messages"


def run_lease(p: str, run_id: str) -> str:
    """String: the token of the worker applying the run's step (expires)."""
    return f"{run(p, run_id)}:lease"


def run_events(p: str, run_id: str) -> str:
    """Stream: what happened to the run, in order (bounded, expires)."""
    return f"{run(p, run_id)}:events"


def active_runs(p: str) -> str:
    """Sorted set: unfinished runs, scored by when their next progress is due (the
    watchdog's worklist)."""
    return f"{p}{ACTIVE_RUNS_SEGMENT}"


# Fields of a run's record that are numbered by step (the others are fixed names).
def gen_field(step: int) -> str:
    """The generation (claim token) of the answer applied as ``step``."""
    return f"gen:{step}"


def tools_field(step: int) -> str:
    """How many tool calls ``step`` dispatched."""
    return f"tools:{step}"


def deliveries_field(step: int) -> str:
    """How many deliveries began ``step`` (a crash of their worker is one more)."""
    return f"deliveries:{step}"


# --- tool calls ------------------------------------------------------------------------------
#: The part after the prefix of every tool-call record (``<p>:tool:<id>``).
TOOL_SEGMENT = ":tool:"


def tool_call_id(run_id: str, step: int, index: int) -> str:
    """The ID of the ``index``-th tool call the answer of ``step`` of ``run_id`` asked for
    (also the ID of the child run, when it calls a sub-agent)."""
    return f"{run_id}-{step}-{index}"


def tool(p: str, call_id: str) -> str:
    """Hash: a tool call's record (name, arguments, status, result, timestamps, attempts)."""
    return f"{p}{TOOL_SEGMENT}{call_id}"


def tool_lease(p: str, call_id: str) -> str:
    """String: the token of the worker running the tool call (expires)."""
    return f"{tool(p, call_id)}:lease"


def tool_no_run(p: str, call_id: str) -> str:
    """Never written: the run key a standalone call's scripts get, which has no run."""
    return f"{tool(p, call_id)}:no-run"


# --- caches --------------------------------------------------------------------------------
#: The part after the prefix of every cache entry (``<p>:cache:<kind>:<tenant>:...``): an
#: entry belongs to its tenant, so no tenant is ever answered from another's.
CACHE_SEGMENT = ":cache:"


def tool_cache(p: str, tenant: str, name: str, schema_hash: str, digest: str) -> str:
    """String: a successful result of tool ``name`` (the call's result JSON), kept for the
    tool's ``cache_ttl`` (expires): for the tool as its schema hash says it is, and for the
    arguments whose canonical JSON has SHA-256 ``digest``."""
    return f"{p}{CACHE_SEGMENT}tool:{tenant}:{name}:{schema_hash}:{digest}"


def llm_cache(p: str, tenant: str, digest: str) -> str:
    """String: an LLM answer kept for a run's ``cache_ttl`` (expires), under the digest of
    everything the call sends (:mod:`agentfleet.tasks.llm_cache`), per tenant."""
    return f"{p}{CACHE_SEGMENT}llm:{tenant}:{digest}"


def llm_cache_flight(p: str, tenant: str, digest: str) -> str:
    """String: held (expires) by the one worker making a call whose answer others wait for."""
    return f"{llm_cache(p, tenant, digest)}:flight"


# --- tenants -------------------------------------------------------------------------------
#: The part after the prefix of a tenant's keys (``<p>:tenant:<t>:...``).
TENANT_SEGMENT = ":tenant:"


def tenant_inflight(p: str, tenant: str) -> str:
    """Set: the tenant's runs that hold one of its slots."""
    return f"{p}{TENANT_SEGMENT}{tenant}:inflight"


def tenant_waiting(p: str, tenant: str) -> str:
    """Sorted set: the tenant's runs waiting for a slot, by age."""
    return f"{p}{TENANT_SEGMENT}{tenant}:waiting"


#: The indexes of a tenant's runs besides the one of all of them (``tenant_runs``): each
#: is ``<p>:tenant:<t>:runs:<kind>:<value>``. ``status`` and ``error`` (its code) are written
#: when a run becomes final; ``agent``, ``thread`` and ``meta`` (``<key>=<value>`` of its
#: metadata) when it is accepted.
RUN_INDEXES: Final = ("status", "error", "agent", "thread", "meta")


def tenant_runs(p: str, tenant: str, kind: str = "", value: str = "") -> str:
    """Sorted set: the tenant's runs by creation time (expires with the runs, trimmed on
    write); with ``kind`` (one of :data:`RUN_INDEXES`), only those with that ``value``."""
    base = f"{p}{TENANT_SEGMENT}{tenant}:runs"
    return f"{base}:{kind}:{value}" if kind else base


def tenant_spend(p: str, tenant: str, day: str) -> str:
    """Hash: what the tenant's LLM calls used on ``day`` (UTC, ``YYYY-MM-DD``): ``tokens``,
    ``cost``, ``calls``, the same per model (``["model", kind]``), and what calls in flight
    hold (``held_tokens``, ``held_cost``, ``held:<id>``) (expires)."""
    return f"{p}{TENANT_SEGMENT}{tenant}:spend:{day}"


def tenant_spend_held(p: str, tenant: str, day: str) -> str:
    """Sorted set: the reservations of calls in flight on ``day``, by when they lapse."""
    return f"{tenant_spend(p, tenant, day)}:held"


# --- threads -------------------------------------------------------------------------------
#: The part after the prefix of a thread's keys (``<p>:thread:<tenant>:<id>``): a thread
#: belongs to its tenant, so two tenants' threads of one ID are two threads.
THREAD_SEGMENT = ":thread:"


def thread(p: str, tenant: str, thread_id: str) -> str:
    """Hash: a thread's record (tenant, id, created_at, updated_at, turns, seq)."""
    return f"{p}{THREAD_SEGMENT}{tenant}:{thread_id}"


def thread_messages(p: str, tenant: str, thread_id: str) -> str:
    """List: the thread's history, one JSON message per entry, oldest first."""
    return f"{thread(p, tenant, thread_id)}:messages"


def thread_turns(p: str, tenant: str, thread_id: str) -> str:
    """List: how many messages each turn of the history has (a run that succeeded on the
    thread is a turn), so the oldest turns are dropped whole."""
    return f"{thread(p, tenant, thread_id)}:turns"


def thread_queue(p: str, tenant: str, thread_id: str) -> str:
    """Sorted set: the thread's unfinished runs by the order they were accepted; the first one
    is the one that runs, the others wait their turn."""
    return f"{thread(p, tenant, thread_id)}:queue"


def thread_runs(p: str, tenant: str, thread_id: str) -> str:
    """List: the thread's runs as they were accepted (the newest ones, bounded)."""
    return f"{thread(p, tenant, thread_id)}:runs"


# --- batches -------------------------------------------------------------------------------
#: The part after the prefix of a batch's keys (``<p>:batch:<id>``).
BATCH_SEGMENT = ":batch:"


def batch(p: str, batch_id: str) -> str:
    """Hash: a batch's totals (tenant, status, total, completed, n_<status>, result, ...)."""
    return f"{p}{BATCH_SEGMENT}{batch_id}"


def batch_items(p: str, batch_id: str) -> str:
    """List: the batch's items in request order, each :func:`item`."""
    return f"{batch(p, batch_id)}:items"


#: The kinds of :func:`item`.
RUN_ITEM = "run"
TOOL_ITEM = "tool"


def item(kind: str, ident: str) -> str:
    """An entry of :func:`batch_items`: ``run:<id>`` or ``tool:<id>``."""
    return f"{kind}:{ident}"


def parse_item(entry: str) -> tuple[str, str]:
    """``(kind, ID)`` of an :func:`item`."""
    kind, _, ident = entry.partition(":")
    return kind, ident


# --- the API -------------------------------------------------------------------------------
def pending_slot(key: str) -> str:
    """Never written: the Idempotency-Key slot ``accept`` gets for a request without a key."""
    return f"{key}:no-slot"


def idempotency(p: str, tenant: str, digest: str) -> str:
    """String: the answer kept for a tenant's Idempotency-Key (by its SHA-256, expires)."""
    return f"{p}:idem:{tenant}:{digest}"


def api_keys(p: str) -> str:
    """Hash: SHA-256 of an API key -> its tenant."""
    return f"{p}:apikeys"


# --- the fleet -----------------------------------------------------------------------------
def fleet_nodes(p: str) -> str:
    """Set: nodes that published their record (pruned of those whose record expired)."""
    return f"{p}:fleet:nodes"


def fleet_node(p: str, node: str) -> str:
    """String: a node's record, JSON (expires). ``node=""`` gives the prefix of them all."""
    return f"{p}:fleet:node:{node}"


def fleet_schema(p: str, schema_hash: str) -> str:
    """String: a tool's ``{name, description, parameters}`` by its hash (expires)."""
    return f"{p}:fleet:schema:{schema_hash}"


def fleet_agent(p: str, digest: str) -> str:
    """String: an agent's definition (``Agent.describe``) by its digest (expires)."""
    return f"{p}:fleet:agent:{digest}"


def watchdog_sweep(p: str) -> str:
    """String: whose turn it is to sweep the overdue runs (expires within a sweep interval)."""
    return f"{p}:watchdog:sweep"


# --- providers -----------------------------------------------------------------------------
def provider(p: str, name: str) -> str:
    """The namespace of a provider's keys: its pybreaker storage and the keys below."""
    return f"{p}:provider:{name}"


def breaker(namespace: str, field: str) -> str:
    """String: a field of pybreaker's ``CircuitRedisStorage`` in ``namespace`` (``state``,
    ``fail_counter``, ``success_counter``, ``opened_at``): pybreaker's own naming."""
    return f"{namespace}:pybreaker:{field}"


def provider_probes(namespace: str) -> str:
    """String: half-open trial calls in flight across the fleet (expires)."""
    return f"{namespace}:probes"


def provider_hold(namespace: str) -> str:
    """String: the time until which a ``Retry-After`` holds every call (expires)."""
    return f"{namespace}:hold"


def provider_rpm(namespace: str) -> str:
    """String: the requests-per-minute limiter's theoretical arrival time (expires)."""
    return f"{namespace}:rpm"


def provider_tpm(namespace: str) -> str:
    """String: the tokens-per-minute limiter's theoretical arrival time (expires)."""
    return f"{namespace}:tpm"


def announced(namespace: str, state: str = "") -> str:
    """String: marks ``state`` as announced to the fleet (expires); ``""``: their prefix."""
    return f"{namespace}:announced:{state}"


def provider_events(p: str) -> str:
    """Stream: every provider's breaker state changes (bounded)."""
    return f"{p}:events:providers"


# --- metrics -------------------------------------------------------------------------------
#: The part after the prefix of the metric hashes.
METRICS_SEGMENT = ":metrics:"


@dataclass(frozen=True)
class MetricKeys:
    """Where the metrics of a fleet live, for the writers and the reader alike."""

    prefix: str

    @property
    def runs(self) -> str:
        """Hash: runs enqueued, succeeded, failed, cancelled."""
        return f"{self.prefix}{METRICS_SEGMENT}runs"

    @property
    def run_seconds(self) -> str:
        """Hash: histogram of created -> finished, per bucket, and its sum."""
        return f"{self.prefix}{METRICS_SEGMENT}run_seconds"

    @property
    def step_seconds(self) -> str:
        """Hash: histogram of a step's claim -> its answer stored."""
        return f"{self.prefix}{METRICS_SEGMENT}step_seconds"

    @property
    def llm(self) -> str:
        """Hash: ``["provider", "model", "prompt"|"completion"|"calls"]`` -> count."""
        return f"{self.prefix}{METRICS_SEGMENT}llm"

    @property
    def admission_denials(self) -> str:
        """Hash: ``["provider", reason]`` -> count."""
        return f"{self.prefix}{METRICS_SEGMENT}admission_denials"

    @property
    def spend(self) -> str:
        """Hash: ``["tenant", "model", "prompt"|"completion"|"cached"|"calls"|"cost"]`` -> sum."""
        return f"{self.prefix}{METRICS_SEGMENT}spend"

    @property
    def agent_runs(self) -> str:
        """Hash: ``["agent", "succeeded"|"failed"|"cancelled"]`` -> runs that ended so, per
        agent (``""``: runs of none). Agents are registered names, so the fields are few."""
        return f"{self.prefix}{METRICS_SEGMENT}agent_runs"

    @property
    def agent_usage(self) -> str:
        """Hash: ``["agent", "prompt"|"completion"|"cached"|"cost"]`` -> tokens and US dollars
        of the LLM calls of each agent's runs (``""``: runs of none)."""
        return f"{self.prefix}{METRICS_SEGMENT}agent_usage"

    @property
    def llm_cache(self) -> str:
        """Hash: ``["provider", "model", "hit"|"miss"|"shared"]`` -> LLM calls of runs with a
        ``cache_ttl``, by what the cache had (``shared``: a call in flight answered it)."""
        return f"{self.prefix}{METRICS_SEGMENT}llm_cache"

    @property
    def tool_cache(self) -> str:
        """Hash: ``["tool", "hit"|"miss"]`` -> calls of a cached tool, by what the cache had."""
        return f"{self.prefix}{METRICS_SEGMENT}tool_cache"

    @property
    def active_runs(self) -> str:
        """Sorted set of unfinished runs (the watchdog's worklist, scored by due time)."""
        return active_runs(self.prefix)


#: The run record's flag (``1``) of a run whose transcript does not outlive it: its tenant is in
#: ``tenant_no_transcript``. The script that makes the run final deletes the transcript.
NO_TRANSCRIPT_FIELD: Final = "no_transcript"


#: The fragments of keys and fields the Lua scripts spell themselves (each one is part of a key
#: or field above; the metric keys they get from :class:`MetricKeys`).
LUA_SPELLED: Final = (
    ACTIVE_RUNS_SEGMENT,
    TENANT_SEGMENT,
    THREAD_SEGMENT,
    ":turns",
    ":queue",
    ":runs",
    ":inflight",
    ":waiting",
    BATCH_SEGMENT,
    ":events",
    ":messages",
    ":lease",
    "gen:",
    "tools:",
    "deliveries:",
    TOOL_SEGMENT,
)
