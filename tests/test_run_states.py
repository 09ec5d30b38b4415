"""docs/run-states.md draws the run state machine the code has.

The diagram's statuses are :class:`RunStatus`'s, its moves are exactly those of
:data:`agentfleet.tasks.states.TRANSITIONS` (each labelled with the scripts that make it), it
starts at :data:`INITIAL` and ends at :data:`FINAL`; and the Lua's notion of final is the same.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from agentfleet.producer.schemas import Run
from agentfleet.tasks.states import FINAL, INITIAL, TRANSITIONS, RunStatus, legal

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "run-states.md"
EDGE = re.compile(r"^\s*(\[\*\]|\w+)\s*-->\s*(\[\*\]|\w+)\s*(?::\s*(.*))?$")


def _diagram() -> list[tuple[str, str, frozenset[str]]]:
    """The moves of the doc's ``stateDiagram-v2`` block: (source, target, script labels)."""
    text = DOC.read_text()
    block = re.search(r"```mermaid\n(stateDiagram-v2\n.*?)```", text, re.DOTALL)
    assert block, "docs/run-states.md has no mermaid stateDiagram-v2 block"
    edges = []
    for line in block.group(1).splitlines()[1:]:
        if not line.strip():
            continue
        match = EDGE.match(line)
        assert match, f"not a transition: {line!r}"
        source, target, label = match.groups()
        scripts = frozenset(s.strip() for s in (label or "").split(",") if s.strip())
        edges.append((source, target, scripts))
    return edges


def test_every_status_is_drawn() -> None:
    drawn = {s for source, target, _ in _diagram() for s in (source, target)} - {"[*]"}
    assert drawn == {s.value for s in RunStatus}


def test_the_drawn_moves_are_the_legal_ones() -> None:
    drawn = {(s, t, scripts) for s, t, scripts in _diagram() if "[*]" not in (s, t)}
    table = {(t.source.value, t.target.value, frozenset(t.scripts)) for t in TRANSITIONS}
    assert drawn == table


def test_a_run_starts_queued_and_ends_final() -> None:
    edges = _diagram()
    assert {(t, scripts) for s, t, scripts in edges if s == "[*]"} == {
        (INITIAL.value, frozenset({"create_run"}))
    }
    assert {s for s, t, _ in edges if t == "[*]"} == {s.value for s in FINAL}


def test_nothing_leaves_a_final_status() -> None:
    assert not [t for t in TRANSITIONS if t.source in FINAL]
    assert all(not legal(final, other) for final in FINAL for other in RunStatus)
    assert legal(RunStatus.QUEUED, RunStatus.RUNNING)
    assert not legal(RunStatus.RUNNING, RunStatus.QUEUED)


def test_the_scripts_named_exist() -> None:
    named = {s for t in TRANSITIONS for s in t.scripts} | {"create_run"}
    assert {s for s in named if not (REPO / "tasks" / "lua" / f"{s}.lua").exists()} == set()


def test_the_lua_means_the_same_by_final() -> None:
    common = (REPO / "tasks" / "lua" / "_common.lua").read_text()
    body = re.search(r"local function is_final\(status\)\n\s*return (.*)\n", common)
    assert body, "is_final is not in _common.lua"
    assert set(re.findall(r"status == '(\w+)'", body.group(1))) == {s.value for s in FINAL}


def test_the_api_schema_names_the_same_statuses() -> None:
    assert set(get_args(Run.model_fields["status"].annotation)) == {s.value for s in RunStatus}
