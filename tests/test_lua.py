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
    "wait_step": scripts.WAIT_STEP,
    "decide": scripts.DECIDE,
    "release_step": scripts.RELEASE_STEP,
    "drop_lease": scripts.DROP_LEASE,
    "create_tool": scripts.CREATE_TOOL,
    "begin_tool": scripts.BEGIN_TOOL,
    "complete_tool": scripts.COMPLETE_TOOL,
    "cancel_tool": scripts.CANCEL_TOOL,
    "reserve_spend": scripts.RESERVE_SPEND,
    "settle_spend": scripts.SETTLE_SPEND,
    "admit": _guard._ADMIT,
    "correct_tokens": _guard._CORRECT_TOKENS,
    "hold": _guard._HOLD,
    "mark_opened": _guard._MARK_OPENED,
    "announce": _guard._ANNOUNCE,
}

#: SHA-1 of each script's code as it was when the scripts were Python strings.
CODE = {
    "create_run": "a1848476536b956575da8bd34e6da12ff8a06b81",
    "accept": "e6d666d4744ba8a75f7ddbab7f1348fa06fe7c8d",
    "begin_step": "7b84f691436ff89188f1760de6b80a995b488238",
    "apply_step": "e1d381e32d19214d07b163b05a05ea6c6f907789",
    "finish_step": "d4b3c2ff600179196a59a2f0c7293261f2799fc9",
    "apply_and_finish_step": "5abe63a2b335aec2496a83f96c2fa5701f5e5cc4",
    "cancel_run": "6594335f48ec64b7cc6299529db1fbb53af66961",
    "wait_step": "3bfa61b5323a5a13b7ccdef37c0ce373a46f72fb",
    "decide": "ebc6f98c6071ccf7b7b8991b4eb6aa4d71009b05",
    "release_step": "df1fea6b8157fe6e385cd2ed65625909c436670f",
    "drop_lease": "7f8f6677b8f2b4b65b9b9905151ced126e6b7e49",
    "create_tool": "594a840660984502d6945986b9579f4442826ea5",
    "begin_tool": "831227e30f5dfcfaf591d0520484726d3d6a89dd",
    "complete_tool": "f58577275add9057ed50837acc8a70f27e5488e9",
    "cancel_tool": "1a8d46cf4184a02e4f00946fc07c9a7542147bd8",
    "reserve_spend": "0754b1934d38e65ab116565caa7dc7baaae89a20",
    "settle_spend": "8a2db3e5eb52b345c5affd0289dc4ab034001a40",
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
