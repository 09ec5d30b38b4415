"""Hierarchical planning: a planner hands the tasks of a goal to worker sub-agents, which run
as child runs side by side (one uses a tool of its own), and combines their reports.

    python -m examples.hierarchical_planning   # AGENTFLEET_API_URL, AGENTFLEET_API_KEY set
"""

from __future__ import annotations

from agentfleet.client import Client
from examples._sim import call

TASKS = [
    "Budget the mailing: " + call("calculator", {"expression": "3 * 1200"}),
    "Draft the announcement",
]


def main() -> None:
    with Client() as client:
        goal = "Launch the spring newsletter. " + " ".join(call("plan_worker", t) for t in TASKS)
        plan = client.run(goal, agent="planner_lead")
        print("plan:", plan.result)
        plan = client.get_run(plan.id)  # with its children and the usage of the whole tree
        for child_id in plan.children or []:
            child = client.get_run(child_id)
            print(f"  {child.agent} (depth {child.depth}): {child.result}")
        assert plan.tree_usage is not None
        print("LLM calls in the tree:", plan.tree_usage.llm_calls)


if __name__ == "__main__":
    main()
