"""The Lua scripts are ``.lua`` files with a header each, loaded as they were written.

Each script's code (comments and blank lines aside) is pinned by its SHA-1: moving the scripts
into files changed no line of their logic, and a change to one shows up here to be reviewed
(update the table with it). Each file's header names every KEYS and ARGV index its code uses.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from agentfleet.tasks import scripts
from agentfleet.tasks.llm import _guard

REPO = Path(__file__).resolve().parent.parent
FOLDERS = (REPO / "tasks" / "lua", REPO / "tasks" / "llm" / "lua")

#: The scripts as registered, by file name.
LOADED = {
    "create_run": scripts.CREATE_RUN,
    "accept": scripts.ACCEPT,
    "begin_step": scripts.BEGIN_STEP,
    "apply_step": scripts.APPLY_STEP,
    "finish_step": scripts.FINISH_STEP,
    "apply_and_finish_step": scripts.APPLY_AND_FINISH_STEP,
    "cancel_run": scripts.CANCEL_RUN,
    "release_step": scripts.RELEASE_STEP,
    "drop_lease": scripts.DROP_LEASE,
    "create_tool": scripts.CREATE_TOOL,
    "begin_tool": scripts.BEGIN_TOOL,
    "complete_tool": scripts.COMPLETE_TOOL,
    "cancel_tool": scripts.CANCEL_TOOL,
    "admit": _guard._ADMIT,
    "correct_tokens": _guard._CORRECT_TOKENS,
    "hold": _guard._HOLD,
    "mark_opened": _guard._MARK_OPENED,
    "announce": _guard._ANNOUNCE,
}

#: SHA-1 of each script's code as it was when the scripts were Python strings.
CODE = {
    "create_run": "e2795643d3caba57a9a73a75a42f0425c4aa1a72",
    "accept": "dfef3fec0f0a8359c789e9caa65a0cf062e60603",
    "begin_step": "498b108c196bf3f5eb0ab03686172d775927311f",
    "apply_step": "c22cf4bbfe0d856a50ef1c65a544f6ddaf56ba3d",
    "finish_step": "2f15169f5e20ad695a8b9786bc9928b14ce809c2",
    "apply_and_finish_step": "3f000318e8c8aeeb87160e6e2050ee22f0622a29",
    "cancel_run": "865481e829811ef22393ec2a7da25de30d07dc41",
    "release_step": "46da31423c8b9fd6fee021639d58c3c24d6cd6e0",
    "drop_lease": "7f8f6677b8f2b4b65b9b9905151ced126e6b7e49",
    "create_tool": "12dc5963c5b9d3156c2aebdc5c10048c28cd8e47",
    "begin_tool": "dad03c4c27db43ec0eb38ff30cc2226e59e3289f",
    "complete_tool": "e6e459137ec9efb520d84ffd01e9e3ca29ea9bd6",
    "cancel_tool": "b8a91a46aefd8f2363c6e9d8142aede637094678",
    "admit": "cacb1ff64b1cc5775b32d766e90548b345890ada",
    "correct_tokens": "10040843627375655f900bfe3eefe6ed0374123d",
    "hold": "95ec9123d908381bd6cce24111fb566629cdc389",
    "mark_opened": "f930f0eae22f3631167c1ac82446602b99a37c79",
    "announce": "afc84f096ca6e4abd6bad039f532d0326330b76d",
}
INDEX = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")


def _code(text: str) -> str:
    """The script without its comments and blank lines (none of them has ``--`` in a string)."""
    lines = (line.split("--", 1)[0].rstrip() for line in text.splitlines())
    return "\n".join(line for line in lines if line.strip())


def _files() -> dict[str, Path]:
    return {p.stem: p for folder in FOLDERS for p in sorted(folder.glob("*.lua"))}


@pytest.mark.parametrize("name", sorted(CODE))
def test_the_script_is_the_code_it_was(name: str) -> None:
    digest = hashlib.sha1(_code(LOADED[name]).encode(), usedforsecurity=False)
    assert digest.hexdigest() == CODE[name]


def test_every_file_is_loaded_or_shared() -> None:
    scripts_ = {name for name in _files() if not name.startswith("_")}
    assert scripts_ == set(LOADED)


@pytest.mark.parametrize("name", sorted(_files()))
def test_each_file_opens_with_a_header_naming_what_it_uses(name: str) -> None:
    text = _files()[name].read_text()
    first = text.splitlines()[0]
    assert first.startswith(f"-- {name}:") or name.startswith("_"), first
    head = text.split("\n\n", 1)[0]  # the comment block before the code
    assert all(line.startswith("--") for line in head.splitlines()), head
    used = {m.group(0) for m in INDEX.finditer(_code(text))}
    missing = sorted(u for u in used if u not in head)
    assert not missing, f"{name}.lua uses {missing} without saying what they are"
    if not name.startswith("_"):
        assert "Returns" in head, f"{name}.lua does not say what it returns"
