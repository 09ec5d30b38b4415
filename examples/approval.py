"""An approval-gated tool: a refund waits for a person, who approves it with a corrected
amount; the run holds no worker while it waits.

    python -m examples.approval   # AGENTFLEET_API_URL, AGENTFLEET_API_KEY set
"""

from __future__ import annotations

from agentfleet.client import Client
from examples._sim import call


def main() -> None:
    with Client() as client:
        prompt = "Order A-17 arrived broken. " + call(
            "issue_refund", {"order_id": "A-17", "amount": 120}
        )
        run = client.wait(client.create_run(prompt, agent="refund_desk").id, until_waiting=True)
        (pending,) = run.waiting.pending if run.waiting and run.waiting.pending else []
        print(f"{run.status}: {pending.name} {pending.arguments}")
        # A reviewer (here, this script) approves, with the amount the policy allows.
        client.approve(run.id, pending.id, arguments={"order_id": "A-17", "amount": 100})
        print(client.wait(run.id).result)


if __name__ == "__main__":
    main()
