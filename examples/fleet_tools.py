"""The examples' tools. Workers and the API load them with
``AGENTFLEET_TOOL_MODULES=examples.fleet_tools``."""

from __future__ import annotations

from agentfleet.tasks.tools import tool


@tool(requires_approval=True)
def issue_refund(order_id: str, amount: float) -> str:
    """Refund an amount on an order. A person approves every refund before it is made."""
    return f"refunded {amount:.2f} on order {order_id}"
