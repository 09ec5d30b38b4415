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
    "create_run": "687ea298ef0814e1ff0fd5cc3983ead9269dd0c0",
    "accept": "91ff13120d90fccb16c89114bf02919308df4ecd",
    "begin_step": "eff489a0aa29786b4e43e88e611dc8f3ba009f43",
    "apply_step": "5d2fa7ab27aa4f4bf6c1f814611b609d4f036983",
    "finish_step": "6f034894664ed9ad313e7e5c5462b7c98cb63132",
    "apply_and_finish_step": "f1e02244747444f8f26e6062fa6dfb6303f74302",
    "cancel_run": "7f1b77e9ee31d8c3423e9336049bff4355a49043",
    "wait_step": "394997488debdaba8aa96401131eccadc090b3b1",
    "decide": "b95be16474ab4bed733047cfe25cdcb31d595bde",
    "release_step": "b4ea1eb25a039af1e3c1f950d21e82944e2b2007",
    "drop_lease": "7f8f6677b8f2b4b65b9b9905151ced126e6b7e49",
    "create_tool": "181d2b4f04917d4222507aaefbd90180f60861bb",
    "begin_tool": "f435e5023a28f10a04737f4eaad1c65992fb8a1c",
    "complete_tool": "4771b7440c6997ef56f629e55f7c53249fcd3f38",
    "cancel_tool": "af3ab6473a8cac72ae0911366a6c7ec846d1da65",
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
