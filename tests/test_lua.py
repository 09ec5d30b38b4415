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
    "create_run": "bb0c3ae2a88481c2dadc4eff29b4ac67e5546af6",
    "accept": "796b7dc24e7b53b4eff8980cebf76035f802f93c",
    "begin_step": "ba4cf10f344eb518bfc5b8de353d262adb578591",
    "apply_step": "91df45f6e5efd33dc9cfc6a8bbb4f0958aed86c5",
    "finish_step": "4ef3312ebe2f1020288c2391fbd4f42116e45a07",
    "apply_and_finish_step": "c6b4001f34a7f622e5d12840c1574e0b68c11da7",
    "cancel_run": "e4033ecbcec114828e833d75fc6739b2500e66fc",
    "wait_step": "ec0d6cafe71639658b3a69d503e2a2e44f538d92",
    "decide": "77b6588e5d21570e83617177540726579555b145",
    "release_step": "4ebbb10e8413319cafdc9a6ccdd048d0e6dad9d2",
    "drop_lease": "7f8f6677b8f2b4b65b9b9905151ced126e6b7e49",
    "create_tool": "485928ae7cb86b556fce021a3e20a6fdd4879b37",
    "begin_tool": "893578379cc02c5af732c84c6881efe463cf0994",
    "complete_tool": "123689cbafcfd7b16a8cdc3d63f83a32535a5a52",
    "cancel_tool": "5000deab4321925eaa93ef111eeccebfdb82103b",
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
