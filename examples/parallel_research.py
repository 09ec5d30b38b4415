"""Parallel research: an aggregator has topics researched at the same time, one child run of a
typed researcher each (map), and combines their findings (reduce).

    python -m examples.parallel_research   # AGENTFLEET_API_URL, AGENTFLEET_API_KEY set
"""

from __future__ import annotations

import json

from agentfleet.client import Client
from examples._sim import call
from examples.fleet_agents import Finding

# The simulator's script: what each researcher finds.
FINDINGS = [
    {"topic": "brokers", "summary": "Redis and RabbitMQ both work.", "confidence": 0.9},
    {"topic": "retries", "summary": "Back off exponentially, with jitter.", "confidence": 0.8},
    {"topic": "results", "summary": "Keep them with a TTL.", "confidence": 0.7},
]


def main() -> None:
    with Client() as client:
        script = " ".join(
            call("topic_researcher", f"[[json:{json.dumps(f)}]] Research {f['topic']}")
            for f in FINDINGS
        )
        summary = client.get_run(client.run(script, agent="aggregator").id)
        for child_id in summary.children or []:
            finding = client.get_run(child_id).output(Finding)
            print(f"{finding.topic}: {finding.summary} ({finding.confidence:.0%})")
        print("researchers:", len(summary.children or []), "| aggregate:", summary.result[:60])


if __name__ == "__main__":
    main()
