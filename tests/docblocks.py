"""The fenced blocks of the README and docs/, read once: tests/test_docs.py runs them, and the
suite's fleet (tests/conftest.py) loads their tool and agent modules, so the examples that run
an agent by name run the one the docs define."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
FENCE = re.compile(r"^```(\w*)[ \t]*(.*?)\s*$")
#: The first line of a module block: ``# <module>.py``.
MODULE_LINE = re.compile(r"# (\w+)\.py")


@dataclass(frozen=True)
class Block:
    """A fenced block of a document, and the ``text output`` block that follows it, if any."""

    path: Path
    line: int
    language: str
    flags: frozenset[str]
    text: str
    output: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def kind(self) -> str:
        """What the test does with it: a language, ``tool-module``, ``agent-module``,
        ``agent-file``, or ``skip``."""
        if "no-run" in self.flags or self.language == "text":
            return "skip"
        if self.language == "python" and "tool-module" in self.flags:
            return "tool-module"
        if self.language == "python" and "agent-module" in self.flags:
            return "agent-module"
        if self.language == "yaml" and "agent-file" in self.flags:
            return "agent-file"
        return "console" if self.language == "sh" else self.language


def read_blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path``; an output block is folded into the block before it."""
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index].strip())
        if not opening:
            index += 1
            continue
        indent = len(lines[index]) - len(lines[index].lstrip())
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
        flags = frozenset(opening.group(2).split())
        block = Block(path, index + 1, opening.group(1), flags, body)
        if block.language == "text" and "output" in flags:
            if not blocks or blocks[-1].output is not None:
                raise ValueError(f"{block.where}: an output block follows no example")
            blocks[-1] = dataclasses.replace(blocks[-1], output=body)
        else:
            blocks.append(block)
        index = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOCS for block in read_blocks(path)]


def module_name(block: Block) -> str | None:
    """The module a ``tool-module`` or ``agent-module`` block is, from its first line."""
    named = MODULE_LINE.fullmatch(block.text.splitlines()[0])
    return named.group(1) if named else None


def write_doc_modules(root: Path) -> tuple[list[str], list[str], list[Path]]:
    """Write the docs' tool modules, agent modules and agent files into ``root``; their
    module names (tools, agents) and the files, in the order the docs show them."""
    tools, agents, files = [], [], []
    for block in ALL_BLOCKS:
        if block.kind in ("tool-module", "agent-module") and (name := module_name(block)):
            (root / f"{name}.py").write_text(block.text)
            (tools if block.kind == "tool-module" else agents).append(name)
        elif block.kind == "agent-file":
            path = root / f"agents-{len(files)}.yaml"
            path.write_text(block.text)
            files.append(path)
    return tools, agents, files
