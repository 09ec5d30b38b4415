"""The Redis layout is named in one module, and it is the layout running fleets have.

``agentfleet.tasks.keys`` names every key; any other module that spells one (a string or
f-string piece such as ``":run:"``, ``"gen:"`` or ``":lease"``) fails here, and so does a Lua
script that spells a fragment ``keys.LUA_SPELLED`` does not declare. The table pins each key
to the exact string fleets already have in Redis: renaming one strands their data.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pybreaker
import pytest

from agentfleet.tasks import keys
from agentfleet.tasks.settings import setting_field

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("tasks", "workers", "producer", "ops")
KEYS_MODULE = REPO / "tasks" / "keys.py"

#: What a key spells: a namespace after a colon, a suffix ending a piece, a field or item
#: prefix starting one.
_NAMESPACES = (
    "run|runs|tool|tenant|batch|idem|apikeys|fleet|metrics|provider|events|watchdog|pybreaker"
    "|announced|cache"
)
_SUFFIXES = "messages|lease|events|items|no-run|no-slot|inflight|waiting|probes|hold|rpm|tpm"
SPELLING = re.compile(
    rf"(:(?:{_NAMESPACES})(?::|\b))|(:(?:{_SUFFIXES})$)|(^(?:run|tool|gen|tools|deliveries|af):)"
)
#: A quoted string inside Lua text.
LUA_STRING = re.compile(r"'([^'\n]*)'")


def _spellings(text: str) -> list[str]:
    return [m.group(0) for m in SPELLING.finditer(text)]


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _python_pieces(path: Path) -> Iterator[tuple[int, str]]:
    """Every string constant and f-string piece of ``path`` but its docstrings."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def _lua_strings(text: str) -> list[str]:
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    return LUA_STRING.findall(code)


def _offences() -> list[str]:
    found = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == KEYS_MODULE:
                continue
            for line, piece in _python_pieces(path):
                if "redis.call" in piece:  # Lua in a Python string
                    found += [
                        f"{path.relative_to(REPO)}:{line}: Lua spells {lua!r}"
                        for lua in _lua_strings(piece)
                        if _spellings(lua) and lua not in keys.LUA_SPELLED
                    ]
                    continue
                found += [
                    f"{path.relative_to(REPO)}:{line}: {piece!r} spells {s!r}"
                    for s in _spellings(piece)
                ]
        for path in sorted((REPO / folder).rglob("*.lua")):
            found += [
                f"{path.relative_to(REPO)}: spells {lua!r}"
                for lua in _lua_strings(path.read_text())
                if _spellings(lua) and lua not in keys.LUA_SPELLED
            ]
    return found


def test_no_module_but_keys_spells_a_key() -> None:
    offences = _offences()
    assert not offences, "name these keys in agentfleet.tasks.keys:\n" + "\n".join(offences)


def test_the_scan_finds_a_spelt_key(tmp_path: Path) -> None:
    """The pattern the scan relies on sees the usual ways of spelling a key."""
    for spelt in ('f"{p}:run:{run_id}"', 'f"{key}:lease"', 'f"gen:{step}"', '"af:events:x"'):
        path = tmp_path / "m.py"
        path.write_text(f"x = {spelt}\n")
        assert [s for _, piece in _python_pieces(path) for s in _spellings(piece)], spelt
    assert _lua_strings("ctx.prefix .. ':tenant:' -- 'a:run:'") == [":tenant:"]


#: (produced by agentfleet.tasks.keys, the string fleets have in Redis today).
LAYOUT = [
    (keys.run("af", "r1"), "af:run:r1"),
    (keys.run_prefix("af"), "af:run:"),
    (keys.run_messages("af", "r1"), "af:run:r1:messages"),
    (keys.run_lease("af", "r1"), "af:run:r1:lease"),
    (keys.run_events("af", "r1"), "af:run:r1:events"),
    (keys.active_runs("af"), "af:runs:active"),
    (keys.gen_field(3), "gen:3"),
    (keys.tools_field(3), "tools:3"),
    (keys.deliveries_field(3), "deliveries:3"),
    (keys.tool("af", "c1"), "af:tool:c1"),
    (keys.tool_lease("af", "c1"), "af:tool:c1:lease"),
    (keys.tool_no_run("af", "c1"), "af:tool:c1:no-run"),
    (keys.tool_cache("af", "acme", "calc", "h1", "d1"), "af:cache:tool:acme:calc:h1:d1"),
    (keys.tenant_inflight("af", "acme"), "af:tenant:acme:inflight"),
    (keys.tenant_waiting("af", "acme"), "af:tenant:acme:waiting"),
    (keys.batch("af", "b1"), "af:batch:b1"),
    (keys.batch_items("af", "b1"), "af:batch:b1:items"),
    (keys.item(keys.RUN_ITEM, "r1"), "run:r1"),
    (keys.item(keys.TOOL_ITEM, "c1"), "tool:c1"),
    (keys.pending_slot("af:run:r1"), "af:run:r1:no-slot"),
    (keys.idempotency("af", "acme", "d1"), "af:idem:acme:d1"),
    (keys.api_keys("af"), "af:apikeys"),
    (keys.fleet_nodes("af"), "af:fleet:nodes"),
    (keys.fleet_node("af", "n1"), "af:fleet:node:n1"),
    (keys.fleet_node("af", ""), "af:fleet:node:"),
    (keys.fleet_schema("af", "h1"), "af:fleet:schema:h1"),
    (keys.fleet_agent("af", "d1"), "af:fleet:agent:d1"),
    (keys.thread("af", "t", "th1"), "af:thread:t:th1"),
    (keys.thread_messages("af", "t", "th1"), "af:thread:t:th1:messages"),
    (keys.thread_turns("af", "t", "th1"), "af:thread:t:th1:turns"),
    (keys.thread_queue("af", "t", "th1"), "af:thread:t:th1:queue"),
    (keys.thread_runs("af", "t", "th1"), "af:thread:t:th1:runs"),
    (keys.watchdog_sweep("af"), "af:watchdog:sweep"),
    (keys.provider("af", "openai"), "af:provider:openai"),
    (keys.breaker("af:provider:openai", "state"), "af:provider:openai:pybreaker:state"),
    (keys.provider_probes("af:provider:openai"), "af:provider:openai:probes"),
    (keys.provider_hold("af:provider:openai"), "af:provider:openai:hold"),
    (keys.provider_rpm("af:provider:openai"), "af:provider:openai:rpm"),
    (keys.provider_tpm("af:provider:openai"), "af:provider:openai:tpm"),
    (keys.announced("af:provider:openai"), "af:provider:openai:announced:"),
    (keys.announced("af:provider:openai", "open"), "af:provider:openai:announced:open"),
    (keys.provider_events("af"), "af:events:providers"),
    (keys.MetricKeys("af").runs, "af:metrics:runs"),
    (keys.MetricKeys("af").run_seconds, "af:metrics:run_seconds"),
    (keys.MetricKeys("af").step_seconds, "af:metrics:step_seconds"),
    (keys.MetricKeys("af").llm, "af:metrics:llm"),
    (keys.MetricKeys("af").admission_denials, "af:metrics:admission_denials"),
    (keys.MetricKeys("af").tool_cache, "af:metrics:tool_cache"),
    (keys.MetricKeys("af").active_runs, "af:runs:active"),
    (keys.DEFAULT_PREFIX, "af"),
]


@pytest.mark.parametrize(("produced", "on_disk"), LAYOUT, ids=[e for _, e in LAYOUT])
def test_the_layout_is_the_one_on_disk(produced: str, on_disk: str) -> None:
    assert produced.encode() == on_disk.encode()


def test_the_default_prefix_is_the_settings_default() -> None:
    assert setting_field("key_prefix").default == keys.DEFAULT_PREFIX


def test_each_fragment_the_scripts_spell_is_part_of_a_named_key() -> None:
    produced = [p for p, _ in LAYOUT]
    for fragment in keys.LUA_SPELLED:
        assert any(fragment in p for p in produced), fragment


def test_the_pybreaker_keys_are_pybreakers() -> None:
    """The breaker keys the scripts read are where pybreaker's storage writes them."""
    # Its constructor writes to Redis; only its naming is wanted here.
    storage = pybreaker.CircuitRedisStorage.__new__(pybreaker.CircuitRedisStorage)
    storage._namespace_name = "ns"
    for field in ("state", "fail_counter", "success_counter", "opened_at"):
        assert storage._namespace(field) == keys.breaker("ns", field)
