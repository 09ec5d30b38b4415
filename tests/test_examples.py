"""Every script of examples/ runs against the shared fleet (which loads the examples' agents
and tools) and prints what its pattern should come to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Fleet

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: The scripts; the modules they share (the agents, the tools, the simulator's script) are not.
SHARED = {"fleet_agents", "fleet_tools"}
SCRIPTS = sorted(
    p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_") and p.stem not in SHARED
)
#: What each script prints, line by line (``...`` matches any rest of the line).
EXPECTED = {
    "approval": [
        'waiting: issue_refund {"order_id": "A-17", "amount": 120}',
        'Results: issue_refund="refunded 100.00 on order A-17"',
    ],
    "debate": [
        "round 1: debater_pro: Echo: Motion: remote work beats the office",
        "round 1: debater_con: Echo: Motion: remote work beats the office",
        "round 2: debater_pro: Echo: Motion: remote work beats the office",
        "round 2: debater_con: Echo: Motion: remote work beats the office",
        'verdict: Results: debater_pro="Echo: Motion: remote work beats the office"; ...',
    ],
    "hierarchical_planning": [
        'plan: Results: plan_worker="Results: calculator=3600.0"; '
        'plan_worker="Echo: Draft the announcement"',
        "  plan_worker (depth 1): Results: calculator=3600.0",
        "  plan_worker (depth 1): Echo: Draft the announcement",
        "LLM calls in the tree: 5",
    ],
    "parallel_research": [
        "brokers: Redis and RabbitMQ both work. (90%)",
        "retries: Back off exponentially, with jitter. (80%)",
        "results: Keep them with a TTL. (70%)",
        "researchers: 3 | aggregate: ...",
    ],
    "reflection": [
        "round 1: 'Celery runs tasks.' -> approved=False: Say where the tasks come from.",
        "round 2: 'Celery runs tasks on workers that take them from a broker.' -> "
        "approved=True: Clear and short.",
        "turns on the thread: 2",
    ],
}


def test_every_example_is_checked() -> None:
    assert sorted(EXPECTED) == SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_example(name: str, fleet: Fleet) -> None:
    env = {
        **fleet.stack.env(),
        "AGENTFLEET_API_URL": fleet.stack.api_url,
        "AGENTFLEET_API_KEY": fleet.stack.api_key,
    }
    done = subprocess.run(
        [sys.executable, "-m", f"examples.{name}"],
        cwd=EXAMPLES.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(EXPECTED[name]), done.stdout
    for got, want in zip(lines, EXPECTED[name], strict=True):
        if want.endswith("..."):
            assert got.startswith(want[:-3]), (got, want)
        else:
            assert got == want
