"""Reflection: a writer drafts on a conversation thread, a critic (typed verdicts) judges,
until the critic approves or the rounds run out.

    python -m examples.reflection   # AGENTFLEET_API_URL, AGENTFLEET_API_KEY set
"""

from __future__ import annotations

import json
import uuid

from agentfleet.client import Client
from examples.fleet_agents import Critique

MAX_ROUNDS = 3
# The simulator's script: the writer's drafts and the critic's verdicts, round by round.
DRAFTS = ["Celery runs tasks.", "Celery runs tasks on workers that take them from a broker."]
VERDICTS = [
    {"approved": False, "feedback": "Say where the tasks come from."},
    {"approved": True, "feedback": "Clear and short."},
]


def main() -> None:
    thread = f"essay-{uuid.uuid4().hex[:8]}"  # the writer keeps its drafts on the thread
    request = "Write one sentence on what Celery does."
    with Client() as client:
        for round_ in range(MAX_ROUNDS):
            draft = client.run(
                f"[[reply:{DRAFTS[round_]}]] {request}", agent="writer", thread_id=thread
            ).result
            verdict = client.run(
                f"[[json:{json.dumps(VERDICTS[round_])}]] Judge this draft: {draft}",
                agent="critic",
                output_type=Critique,
            )
            print(
                f"round {round_ + 1}: {draft!r} -> approved={verdict.approved}: {verdict.feedback}"
            )
            if verdict.approved:
                break
            request = f"Revise your draft: {verdict.feedback}"
        print("turns on the thread:", client.get_thread(thread).turns)


if __name__ == "__main__":
    main()
