"""Debate: a moderator asks two debaters for their case, round after round (each answer a
child run), then decides.

    python -m examples.debate   # AGENTFLEET_API_URL, AGENTFLEET_API_KEY set
"""

from __future__ import annotations

from agentfleet.client import Client
from examples._sim import call

MOTION = "Motion: remote work beats the office"
ROUNDS = 2


def main() -> None:
    with Client() as client:
        script = (
            f"[[rounds:{ROUNDS}]] "
            + call("debater_pro", MOTION)
            + " "
            + call("debater_con", MOTION)
        )
        debate = client.get_run(client.run(script, agent="moderator").id)
        children = [client.get_run(c) for c in debate.children or []]
        for child in sorted(children, key=lambda c: c.id.split("-")[-2:]):
            step = child.id.split("-")[-2]
            print(f"round {step}: {child.agent}: {child.result}")
        print("verdict:", debate.result)


if __name__ == "__main__":
    main()
