"""Lua scripts kept as ``.lua`` files beside the Python that registers them.

A package's scripts live in its ``lua/`` folder (shipped as package data). A script is its own
file preceded by the shared parts it uses (files named ``_*.lua``), in the order given; an
``@NAME@`` placeholder is replaced with Lua generated from the Python constant that is its
source of truth. Every file starts with a header: what it does, its KEYS and ARGV by index, what
it reads, writes and returns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources

_PLACEHOLDER = re.compile(r"@[A-Z_]+@")


def source(package: str, name: str) -> str:
    """The text of ``lua/<name>.lua`` in ``package``."""
    return (resources.files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def script(
    package: str, name: str, parts: tuple[str, ...] = (), fill: Mapping[str, str] | None = None
) -> str:
    """Script ``name`` of ``package`` after its shared ``parts``, with ``fill``'s placeholders
    (``{"NAME": lua}`` for ``@NAME@``) replaced. Raises ValueError if one is left."""
    text = "".join(source(package, part) for part in (*parts, name))
    for key, lua in (fill or {}).items():
        text = text.replace(f"@{key}@", lua)
    left = _PLACEHOLDER.search(text)
    if left:
        raise ValueError(f"{package} lua/{name}.lua: {left.group(0)} is not filled in")
    return text
