"""What each worker node has registered, published in Redis: the fleet's view of its tools.

Workers deployed with different ``AGENTFLEET_TOOL_MODULES`` disagree about which tools exist;
the API reads every live node's record to refuse what no live worker can serve, and
``GET /v1/tools`` shows who has what. Each worker's main process runs a :class:`Publisher`
thread that writes its record every ``node_publish_interval`` seconds, with a lifetime of
:data:`TTL_INTERVALS` intervals, and deletes it at a clean shutdown; a node killed outright
drops out when its record expires.

Keys (``<p>`` is ``AGENTFLEET_KEY_PREFIX``), named only here::

    <p>:fleet:nodes           set: nodes that published; members whose record expired are
                              dropped by the next publish of any node
    <p>:fleet:node:<node>     string: the node's record, JSON (expires)
    <p>:fleet:schema:<hash>   string: a tool's ``{name, description, parameters}`` by its
                              schema hash (expires with the last record naming it)
    <p>:fleet:agent:<digest>  string: an agent's definition by its digest (likewise)

A record (version 1)::

    {"version": 1, "node": "agents-1@host", "queues": ["agents"],
     "tools": {"calculator": "<schema hash>", ...}, "agents": {}, "published_at": <unix s>}

``agents`` names the declared agents (name -> definition digest), published the same way.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from agentfleet.tasks import keys
from agentfleet.tasks.agents import Agent
from agentfleet.tasks.agents import registry as agents
from agentfleet.tasks.redisconn import get_redis
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.tools import Tool, registry

log = logging.getLogger(__name__)

#: A record lives this many publish intervals: one late publish does not drop a node.
TTL_INTERVALS = 3
RECORD_VERSION = 1

# Drops the members of the node set whose record has expired, atomically, so a node that
# publishes again at the same moment is never dropped. KEYS[1]: the set; ARGV[1]: the
# prefix of node keys. Returns how many were dropped.
_PRUNE = """
local dropped = 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. node) == 0 then
    redis.call('SREM', KEYS[1], node)
    dropped = dropped + 1
  end
end
return dropped
"""


def nodes_key(settings: Settings) -> str:
    return keys.fleet_nodes(settings.redis.key_prefix)


def node_key(settings: Settings, node: str) -> str:
    return keys.fleet_node(settings.redis.key_prefix, node)


def schema_key(settings: Settings, schema_hash: str) -> str:
    return keys.fleet_schema(settings.redis.key_prefix, schema_hash)


def record_ttl_ms(settings: Settings) -> int:
    return int(settings.workers.node_publish_interval * TTL_INTERVALS * 1000)


@dataclass(frozen=True)
class NodeRecord:
    """What one live worker node has registered."""

    node: str
    queues: tuple[str, ...]
    tools: Mapping[str, str]  # name -> schema hash
    agents: Mapping[str, str] = field(default_factory=dict)
    published_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": RECORD_VERSION,
                "node": self.node,
                "queues": list(self.queues),
                "tools": dict(self.tools),
                "agents": dict(self.agents),
                "published_at": self.published_at,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> NodeRecord | None:
        """The record, or None for one this code cannot read (a newer version, garbage)."""
        try:
            data = json.loads(raw)
            if data.get("version") != RECORD_VERSION:
                return None
            return cls(
                node=str(data["node"]),
                queues=tuple(str(q) for q in data["queues"]),
                tools={str(k): str(v) for k, v in data["tools"].items()},
                agents={str(k): str(v) for k, v in (data.get("agents") or {}).items()},
                published_at=float(data["published_at"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def serves(self, queue: str) -> bool:
        return queue in self.queues


@dataclass(frozen=True)
class FleetView:
    """The records of the live nodes, in node order. Empty: no node has published."""

    nodes: tuple[NodeRecord, ...] = ()

    def on(self, queue: str) -> list[NodeRecord]:
        """The live nodes consuming ``queue``."""
        return [n for n in self.nodes if n.serves(queue)]

    def lacking(self, queue: str, tools: Iterable[str]) -> list[str]:
        """Those of ``tools`` that no live node of ``queue`` has; none when the queue has no
        live node (nothing is known about it)."""
        nodes = self.on(queue)
        if not nodes:
            return []
        return [t for t in tools if not any(t in n.tools for n in nodes)]

    def lacking_agent(self, queue: str, agent: str) -> bool:
        """Whether live nodes consume ``queue`` and none of them has ``agent``."""
        nodes = self.on(queue)
        return bool(nodes) and not any(agent in n.agents for n in nodes)

    def everywhere(self, queues: Iterable[str], tools: Iterable[str]) -> list[str]:
        """Those of ``tools`` that every live node of each of ``queues`` has."""
        nodes = [n for q in queues for n in self.on(q)]
        return [t for t in tools if all(t in n.tools for n in nodes)]


def record_of(
    node: str, queues: Iterable[str], tools: Iterable[Tool], agents: Iterable[Agent] = ()
) -> NodeRecord:
    """This process's record, stamped now."""
    return NodeRecord(
        node=node,
        queues=tuple(sorted(queues)),
        tools={t.name: t.schema_hash for t in tools},
        agents={a.name: a.digest for a in agents},
        published_at=time.time(),
    )


def publish(
    client: redis.Redis,
    settings: Settings,
    record: NodeRecord,
    tools: Iterable[Tool],
    agents: Iterable[Agent] = (),
) -> None:
    """Write (or refresh) ``record``, the schemas of its tools and the definitions of its
    agents; one round trip."""
    ttl = record_ttl_ms(settings)
    pipe = client.pipeline(transaction=True)
    pipe.set(node_key(settings, record.node), record.to_json(), px=ttl)
    pipe.sadd(nodes_key(settings), record.node)
    for tool in tools:
        schema = json.dumps(tool.openai_schema["function"])
        pipe.set(schema_key(settings, tool.schema_hash), schema, px=ttl)
    for agent in agents:
        definition = json.dumps(agent.describe())
        pipe.set(keys.fleet_agent(settings.redis.key_prefix, agent.digest), definition, px=ttl)
    pipe.eval(_PRUNE, 1, nodes_key(settings), node_key(settings, ""))
    pipe.execute()


def withdraw(client: redis.Redis, settings: Settings, node: str) -> None:
    """Delete ``node``'s record: it stops serving now, not when the record would expire."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(node_key(settings, node))
    pipe.srem(nodes_key(settings), node)
    pipe.execute()


def read(client: redis.Redis, settings: Settings) -> FleetView:
    """The live nodes' records: two round trips whatever the fleet's size."""
    names = sorted(cast(set[str], client.smembers(nodes_key(settings))))
    if not names:
        return FleetView()
    raw = cast(list[str | None], client.mget([node_key(settings, n) for n in names]))
    records = (NodeRecord.from_json(r) for r in raw if r is not None)
    return FleetView(tuple(r for r in records if r is not None))


def definitions(client: redis.Redis, settings: Settings, digests: list[str]) -> dict[str, Any]:
    """``{digest: definition}`` of the agents of ``digests`` still stored."""
    if not digests:
        return {}
    raw = client.mget([keys.fleet_agent(settings.redis.key_prefix, d) for d in digests])
    found = cast(list[str | None], raw)
    return {d: json.loads(r) for d, r in zip(digests, found, strict=True) if r is not None}


def schemas(client: redis.Redis, settings: Settings, hashes: list[str]) -> dict[str, Any]:
    """``{hash: {name, description, parameters}}`` for those of ``hashes`` still stored."""
    if not hashes:
        return {}
    raw = cast(list[str | None], client.mget([schema_key(settings, h) for h in hashes]))
    return {h: json.loads(r) for h, r in zip(hashes, raw, strict=True) if r is not None}


class Publisher(threading.Thread):
    """Publishes this node's record in the background until :meth:`stop`, then withdraws it."""

    def __init__(self, settings: Settings, node: str, queues: Iterable[str]) -> None:
        super().__init__(name="agentfleet-fleet-publisher", daemon=True)
        self.settings, self.node, self.queues = settings, node, tuple(queues)
        self._stopped = threading.Event()

    def publish_once(self) -> None:
        tools, declared = registry.all(), agents.all()
        record = record_of(self.node, self.queues, tools, declared)
        publish(get_redis(self.settings), self.settings, record, tools, declared)

    def run(self) -> None:
        interval = self.settings.workers.node_publish_interval
        while True:
            try:
                self.publish_once()
            except Exception:
                # Redis down: the record may expire meanwhile; the next publish restores it.
                log.exception("publishing node %s failed", self.node)
            if self._stopped.wait(interval * random.uniform(0.9, 1.0)):
                break
        try:
            withdraw(get_redis(self.settings), self.settings, self.node)
        except redis.RedisError as exc:
            log.warning("node %s could not withdraw its record (it expires): %s", self.node, exc)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop publishing and withdraw the record (waits up to ``timeout`` seconds)."""
        self._stopped.set()
        self.join(timeout)


_running: Publisher | None = None


def start(settings: Settings, node: str, queues: Iterable[str]) -> None:
    """Start this process's publisher (once)."""
    global _running
    if _running is None:
        _running = Publisher(settings, node, queues)
        _running.start()


def stop() -> None:
    global _running
    if _running is not None:
        _running.stop()
        _running = None
