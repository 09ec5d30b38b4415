"""The documentation is tested: its examples run, its links resolve, its settings table is current.

Every fenced block of ``README.md`` and ``docs/*.md`` is read. Its info string says what is done
with it (docs/testing.md has the table): ``python`` blocks run in a fresh interpreter against
the suite's fleet (``AGENTFLEET_API_URL``, ``AGENTFLEET_API_KEY`` and ``AGENTFLEET_REDIS_URL``
name it), and a ``text output`` block right after one must match what it printed;
``python tool-module`` blocks are imported and their tools checked; ``console`` and ``sh``
blocks run their ``$`` commands in one bash session, each checked against the lines shown after
it; ``json`` blocks are parsed, and validated by our models when they say which. ``no-run``
marks a block that cannot run here. Output is compared as doctest does, with ``...`` standing
for any text and whitespace normalised.
"""

from __future__ import annotations

import doctest
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from agentfleet.tasks.models import BatchRequest, RunRequest
from agentfleet.tasks.setting_groups import ProviderConfig
from agentfleet.tasks.settings import FIELD_GROUPS, setting_field
from ops import config_reference
from tests.conftest import Fleet
from tests.docblocks import ALL_BLOCKS, DOCS, REPO, Block

#: Languages a block may have; any other (or none) fails, so nothing is skipped unnoticed.
#: Mermaid: the run state diagram, checked against the code by tests/test_run_states.py.
LANGUAGES = frozenset({"python", "console", "sh", "json", "text", "mermaid", "yaml"})
#: Fewest blocks of each kind that must run: marking every example no-run fails.
MINIMUM_RUN = {
    "python": 3,
    "tool-module": 2,
    "agent-module": 2,
    "agent-file": 1,
    "console": 2,
    "json": 5,
}
#: Validators of JSON blocks by the flag after ``json``.
JSON_MODELS: dict[str, Callable[[Any], object]] = {
    "run-request": RunRequest.model_validate,
    "batch-request": BatchRequest.model_validate,
    "providers": TypeAdapter(list[ProviderConfig]).validate_python,
}
COMPARE = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _blocks_of(kind: str) -> list[Any]:
    return [pytest.param(b, id=b.where) for b in ALL_BLOCKS if b.kind == kind]


def _matches(want: str, got: str) -> bool:
    return doctest.OutputChecker().check_output(want, got, COMPARE)


def _mismatch(block: Block, what: str, want: str, got: str) -> str:
    return f"{block.where}: {what} differs from the document\n--- shown\n{want}--- printed\n{got}"


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """An example's process, run to its end in ``cwd`` (a fresh directory of its own)."""
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False
    )


@pytest.fixture
def fleet_env(fleet: Fleet) -> dict[str, str]:
    """The environment an example sees: the suite's fleet, and this interpreter's scripts."""
    stack = fleet.stack
    return {
        **os.environ,
        "AGENTFLEET_API_URL": stack.api_url,
        "AGENTFLEET_API_KEY": stack.api_key,
        "AGENTFLEET_REDIS_URL": stack.redis_url or "",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def test_every_block_has_a_known_language() -> None:
    unknown = [
        f"{b.where}: {b.language or '(none)'}" for b in ALL_BLOCKS if b.language not in LANGUAGES
    ]
    assert not unknown, f"fenced blocks need one of {sorted(LANGUAGES)}: {unknown}"


def test_enough_examples_run() -> None:
    ran = Counter(b.kind for b in ALL_BLOCKS)
    short = {kind: ran[kind] for kind, least in MINIMUM_RUN.items() if ran[kind] < least}
    assert not short, f"too few examples run (kind: count): {short}; at least {MINIMUM_RUN}"


@pytest.mark.parametrize("block", _blocks_of("python"))
def test_python_example(block: Block, fleet_env: dict[str, str], tmp_path: Path) -> None:
    done = _run([sys.executable, "-c", block.text], tmp_path, fleet_env)
    assert done.returncode == 0, f"{block.where}: exited {done.returncode}\n{done.stderr}"
    if block.output is not None:
        assert _matches(block.output, done.stdout), _mismatch(
            block, "output", block.output, done.stdout
        )


_TOOLS_OF = textwrap.dedent(
    """
    import importlib, inspect, json, sys
    from agentfleet.tasks.tools import registry
    name = sys.argv[1]
    importlib.import_module(name)
    print(json.dumps([
        {"name": t.name, "description": t.description, "parameters": t.parameters,
         "arguments": list(inspect.signature(t.func).parameters), "doc": inspect.getdoc(t.func)}
        for t in registry.all() if t.func.__module__ == name
    ]))
    """
)


@pytest.mark.parametrize("block", _blocks_of("tool-module"))
def test_tool_example(block: Block, tmp_path: Path) -> None:
    first = block.text.splitlines()[0]
    named = re.fullmatch(r"# (\w+)\.py", first)
    assert named, f"{block.where}: a tool module starts with '# <module>.py', not {first!r}"
    module = named.group(1)
    (tmp_path / f"{module}.py").write_text(block.text)
    done = _run(
        [sys.executable, "-c", _TOOLS_OF, module],
        tmp_path,
        {**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode == 0, f"{block.where}: importing it failed\n{done.stderr}"
    tools = json.loads(done.stdout)
    assert len(tools) == block.text.count("@tool"), f"{block.where}: registered {tools}"
    for tool in tools:
        assert tool["description"], f"{block.where}: {tool['name']} has no description"
        assert tool["description"] == tool["doc"].split("\n\n")[0].strip()
        assert sorted(tool["parameters"]["properties"]) == sorted(tool["arguments"]), tool


@pytest.mark.parametrize("block", _blocks_of("agent-module") + _blocks_of("agent-file"))
def test_agent_example_is_served_by_the_fleet(block: Block, fleet: Fleet) -> None:
    """The docs' agents are loaded by the suite's fleet (tests/conftest.py): each is listed by
    the API, on a live agents worker, with the schemas its definition gives."""
    if block.kind == "agent-module":
        declared = re.findall(r'Agent\(\s*name="(\w+)"', block.text)
    else:
        declared = re.findall(r"^  - name: (\w+)$", block.text, flags=re.M)
    assert declared, f"{block.where}: declares no agent"
    listed = {a.name: a for a in fleet.client.agents()}
    for name in declared:
        assert name in listed, f"{block.where}: {name} is not served"
        agent = listed[name]
        assert agent.on_api, agent
        assert agent.nodes, agent
        assert not agent.mismatches, agent
        assert agent.output_schema is not None, f"{block.where}: {name} is not typed"


@dataclass(frozen=True)
class Command:
    text: str
    want: str


def _continues(command: str) -> bool:
    """True while ``command`` is unfinished, as bash sees it: a trailing ``\\`` or an open quote."""
    if command.endswith("\\"):
        return True
    try:
        shlex.split(command, comments=True)
    except ValueError:  # no closing quotation
        return True
    return False


def commands(block: Block) -> list[Command]:
    """The ``$`` commands of a console block (an open quote or a ``\\`` continues one on the
    next line), each with the lines shown after it as its output."""
    found: list[Command] = []
    lines = block.text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        assert line.startswith("$ "), f"{block.where}: expected a '$ ' command, got {line!r}"
        text = [line[2:]]
        while _continues("\n".join(text)) and index + 1 < len(lines):
            index += 1
            text.append(lines[index])
        index += 1
        want = []
        while index < len(lines) and not lines[index].startswith("$ "):
            want.append(lines[index])
            index += 1
        found.append(Command("\n".join(text), "\n".join(want).strip() + "\n"))
    return found


MARK = "@@@ agentfleet docs command"


@pytest.mark.parametrize("block", _blocks_of("console"))
def test_console_example(block: Block, fleet_env: dict[str, str], tmp_path: Path) -> None:
    steps = commands(block)
    script = "".join(
        f"printf '%s %d\\n' '{MARK}' {i}\n{c.text}\nprintf '\\n%s rc %d\\n' '{MARK}' $?\n"
        for i, c in enumerate(steps)
    )
    done = _run(["bash", "-c", script], tmp_path, fleet_env)
    parts = re.split(rf"^{MARK} (\d+)\n", done.stdout, flags=re.M)[1:]
    assert len(parts) == 2 * len(steps), f"{block.where}: bash stopped\n{done.stderr}"
    for step, got in zip(steps, parts[1::2], strict=True):
        printed, _, status = got.rpartition(f"\n{MARK} rc ")
        assert status.strip() == "0", (
            f"{block.where}: `{step.text}` exited {status.strip()}\n{done.stderr}"
        )
        if step.want.strip():
            assert _matches(step.want, printed.strip() + "\n"), _mismatch(
                block, f"the output of `{step.text}`", step.want, printed.strip() + "\n"
            )


#: What differs between two runs of the demo, and is replaced before they are compared.
_VARYING = (
    (re.compile(r"basic auth: (\S+) / \S+\)"), r"basic auth: \1 / <password>)"),
    (re.compile(r"logs: \S+"), "logs: <dir>"),
    (re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}"), "<id>"),
    (re.compile(r"af_[\w-]+"), "<key>"),
    (re.compile(r"@[\w.-]+"), "@<host>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
)


def _steady(text: str) -> str:
    for pattern, replacement in _VARYING:
        text = pattern.sub(replacement, text)
    return text


def test_demo_prints_what_the_readme_shows(tmp_path: Path) -> None:
    """``make demo`` (``python -m ops.demo``) prints the README's sample, IDs, numbers, hosts
    and ports aside; the sample's ``...`` lines stand for what it leaves out."""
    (shown,) = [b for b in ALL_BLOCKS if "demo-output" in b.flags]
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AGENTFLEET_") and name not in ("REDIS_URL", "BROKER_URL")
    }
    done = _run([sys.executable, "-m", "ops.demo", "--workdir", str(tmp_path)], REPO, env)
    assert done.returncode == 0, f"the demo exited {done.returncode}\n{done.stdout}{done.stderr}"
    want, got = _steady(shown.text), _steady(done.stdout)
    assert _matches(want, got), _mismatch(shown, "make demo's output", want, got)


@pytest.mark.parametrize("block", _blocks_of("json"))
def test_json_example(block: Block) -> None:
    try:
        value = json.loads(block.text)
    except json.JSONDecodeError as exc:
        pytest.fail(f"{block.where}: not JSON: {exc}")
    for flag in block.flags & JSON_MODELS.keys():
        JSON_MODELS[flag](value)


def _slug(heading: str) -> str:
    # GitHub's anchors: lower case, punctuation dropped, spaces to hyphens.
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path) -> None:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{path.relative_to(REPO)}: broken links {broken}"


def test_configuration_reference_matches_settings() -> None:
    current = config_reference.DOC.read_text()
    assert current == config_reference.render(current), (
        "docs/configuration.md does not match the settings: run python -m ops.config_reference"
    )


def test_every_setting_has_a_description() -> None:
    for name in FIELD_GROUPS:
        assert setting_field(name).description, f"settings field {name!r} has no description"
