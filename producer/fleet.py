"""The fleet's tools as the API sees them (the live workers' records,
:mod:`agentfleet.tasks.fleet`), and what the API refuses because of them.

A tool is refused (422) when the workers that would need it are live and none of them has it:
a run needs its tools on an ``agents`` worker (to offer them to the model) and on a ``tools``
worker (to run the calls); a tool call needs its tool on a ``tools`` worker. A queue with no
live worker tells nothing, so it refuses nothing: while the fleet is down or starting, work is
accepted and queued, and a worker that takes a run lacking one of its tools fails the run
with ``tools_unavailable``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from agentfleet.tasks import fleet
from agentfleet.tasks.agents import registry as agents
from agentfleet.tasks.fleet import FleetView, NodeRecord
from agentfleet.tasks.models import BatchRequest, RunItem, RunRequest, ToolCallItem
from agentfleet.tasks.redisconn import get_redis
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.tools import Tool, registry
from agentfleet.workers import queues

#: Seconds the API reuses its view of the fleet, so a request costs no Redis read for it; a
#: worker that comes or goes is seen within this plus its publish interval.
MAX_AGE = 1.0
#: The queues whose workers a run's tools must be on.
RUN_QUEUES = (queues.AGENTS, queues.TOOLS)
#: Schemas kept by hash; they never change, so only their number is bounded.
MAX_SCHEMAS = 4096


class FleetCache:
    """The live workers' records, read at most once per :data:`MAX_AGE` per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._view = FleetView()
        self._read_at = -MAX_AGE
        self._schemas: dict[str, Any] = {}
        self._lock = threading.Lock()

    def view(self) -> FleetView:
        with self._lock:
            if time.monotonic() - self._read_at >= MAX_AGE:
                self._view = fleet.read(get_redis(self.settings), self.settings)
                self._read_at = time.monotonic()
            return self._view

    def definitions(self, digests: Iterable[str]) -> dict[str, Any]:
        """``{digest: definition}`` of agents the API does not have itself (never cached: the
        listing is rare, and a definition is small)."""
        return fleet.definitions(get_redis(self.settings), self.settings, list(digests))

    def schemas(self, hashes: Iterable[str]) -> dict[str, Any]:
        """``{hash: {name, description, parameters}}`` of tools the API does not have itself."""
        wanted = [h for h in dict.fromkeys(hashes) if h not in self._schemas]
        found = fleet.schemas(get_redis(self.settings), self.settings, wanted)
        if len(self._schemas) + len(found) > MAX_SCHEMAS:
            self._schemas.clear()
        self._schemas |= found
        return self._schemas


def _unserved(view: FleetView, queue_names: Iterable[str], tools: list[str]) -> str | None:
    """A message naming each of ``tools`` (and the queues) no live worker can serve."""
    lacking: dict[str, list[str]] = defaultdict(list)
    for queue in queue_names:
        for name in view.lacking(queue, tools):
            lacking[name].append(queue)
    if not lacking:
        return None
    named = ", ".join(
        f"{name} (queue{'s' if len(qs) > 1 else ''} {', '.join(qs)})"
        for name, qs in lacking.items()
    )
    return f"not registered on any live worker: {named}"


def run_problems(
    view: FleetView, request: RunRequest, field: str = "tools"
) -> list[tuple[str, str]]:
    """``(field, message)`` if a tool the run names, known to the API, no live worker has, or
    (field ``agent``, next to it) if its agent is on no live ``agents`` worker."""
    problems = []
    if request.agent and view.lacking_agent(queues.AGENTS, request.agent):
        where = field.rpartition(".")[0]
        problems.append(
            (
                f"{where}.agent" if where else "agent",
                f"agent {request.agent!r} is not declared on any live worker of queue "
                f"{queues.AGENTS} (their AGENTFLEET_AGENT_MODULES or AGENTFLEET_AGENT_FILES "
                "lack it)",
            )
        )
    if lacking := [a for a in request.subagents or [] if view.lacking_agent(queues.AGENTS, a)]:
        problems.append(
            ("subagents", f"not declared on any live worker of queue {queues.AGENTS}: {lacking}")
        )
    if request.tools is None:
        return problems
    known = [t for t in dict.fromkeys(request.tools) if t in registry]
    message = _unserved(view, RUN_QUEUES, known)
    return problems + ([(field, message)] if message else [])


def tool_call_problems(view: FleetView, name: str, field: str = "name") -> list[tuple[str, str]]:
    """``(field, message)`` if no live ``tools`` worker has tool ``name``."""
    message = _unserved(view, (queues.TOOLS,), [name])
    return [(field, message)] if message else []


def batch_problems(view: FleetView, request: BatchRequest) -> list[tuple[str, str]]:
    """The problems of :func:`run_problems` and :func:`tool_call_problems` for each item."""
    problems: list[tuple[str, str]] = []
    for index, item in enumerate(request.items):
        if isinstance(item, RunItem):
            problems += run_problems(view, item, f"items.{index}.tools")
        elif isinstance(item, ToolCallItem):
            problems += tool_call_problems(view, item.name, f"items.{index}.name")
    return problems


def every_tool(view: FleetView) -> list[str]:
    """What ``tools`` omitted means: the API's tools that every live worker of the run's
    queues has, so the run cannot land on a worker lacking one."""
    return view.everywhere(RUN_QUEUES, registry.default_names())


def listing(cache: FleetCache) -> dict[str, Any]:
    """``GET /v1/tools``: every tool the API or a live worker has, who has it, what differs."""
    view = cache.view()
    names = sorted(set(registry.names()).union(*(n.tools for n in view.nodes)))
    foreign = [_holders(view, n)[0].tools[n] for n in names if n not in registry]
    schemas = cache.schemas(foreign)
    tools = [_tool_entry(view, name, schemas) for name in names]
    nodes = [
        {
            "node": n.node,
            "queues": list(n.queues),
            "tools": sorted(n.tools),
            "published_at": n.published_at,
        }
        for n in view.nodes
    ]
    return {"tools": tools, "nodes": nodes, "mismatch": any(t["mismatches"] for t in tools)}


def agent_listing(cache: FleetCache) -> dict[str, Any]:
    """``GET /v1/agents``: every agent the API or a live worker has, its definition (the
    API's, else a worker's), who has it, and where the fleet disagrees."""
    view = cache.view()
    names = sorted(set(agents.names()).union(*(n.agents for n in view.nodes)))
    foreign = [
        next(n.agents[name] for n in view.nodes if name in n.agents)
        for name in names
        if name not in agents
    ]
    published = cache.definitions(foreign)
    return {"agents": [_agent_entry(view, name, published) for name in names]}


def _agent_entry(view: FleetView, name: str, published: dict[str, Any]) -> dict[str, Any]:
    holders = [n for n in view.nodes if name in n.agents]
    own = agents.get(name) if name in agents else None
    if own is not None:
        digest, definition = own.digest, {**own.describe(), "source": own.source}
    else:
        digest = holders[0].agents[name]
        definition = published.get(digest) or {"name": name}
    mismatches = []
    if view.nodes and view.lacking_agent(queues.AGENTS, name):
        mismatches.append(f"no live worker of queue {queues.AGENTS} has it")
    digests = {n.agents[name] for n in holders} | ({own.digest} if own else set())
    if len(digests) > 1:
        mismatches.append(f"definitions differ between the API and workers: {sorted(digests)}")
    if own is None:
        mismatches.append("the API does not have it: runs of it are refused until it does")
    return {
        **definition,
        "digest": digest,
        "on_api": own is not None,
        "nodes": [
            {"node": n.node, "queues": list(n.queues), "digest": n.agents[name]} for n in holders
        ],
        "mismatches": mismatches,
    }


def _holders(view: FleetView, name: str) -> list[NodeRecord]:
    return [n for n in view.nodes if name in n.tools]


def _tool_entry(view: FleetView, name: str, schemas: dict[str, Any]) -> dict[str, Any]:
    holders = _holders(view, name)
    own = registry.get(name) if name in registry else None
    if own is not None:
        schema_hash, schema = own.schema_hash, own.openai_schema["function"]
    else:
        schema_hash = holders[0].tools[name]
        schema = schemas.get(schema_hash) or {}
    return {
        "name": name,
        "description": schema.get("description", ""),
        "parameters": schema.get("parameters", {}),
        "schema_hash": schema_hash,
        "on_api": own is not None,
        "nodes": [
            {"node": n.node, "queues": list(n.queues), "schema_hash": n.tools[name]}
            for n in holders
        ],
        "queues": sorted({q for n in holders for q in n.queues}),
        "mismatches": _mismatches(view, name, holders, own) if view.nodes else [],
    }


def _mismatches(
    view: FleetView, name: str, holders: list[NodeRecord], own: Tool | None
) -> list[str]:
    found = []
    for queue in RUN_QUEUES:
        nodes = view.on(queue)
        lacking = [n.node for n in nodes if name not in n.tools]
        if nodes and len(lacking) == len(nodes):
            found.append(f"no live worker of queue {queue} has it")
        elif lacking:
            found.append(f"queue {queue}: {', '.join(lacking)} lack it")
    versions: dict[str, list[str]] = defaultdict(list)
    if own is not None:
        versions[own.schema_hash].append("the API")
    for n in holders:
        versions[n.tools[name]].append(n.node)
    if len(versions) > 1:
        found.append(
            "schemas differ: " + "; ".join(f"{h} on {', '.join(w)}" for h, w in versions.items())
        )
    if own is None:
        found.append("the API does not have it (its AGENTFLEET_TOOL_MODULES lack the module)")
    return found
