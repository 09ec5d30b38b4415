"""The LLM provider layer: clients, routing, fleet-wide guards, one error boundary."""

from agentfleet.tasks.llm._call import (
    CallOptions,
    Completion,
    ModelToolCall,
    complete,
    request_body,
    retry_after_seconds,
    translate,
)
from agentfleet.tasks.llm._client import get_client, reset_clients
from agentfleet.tasks.llm._guard import ProviderGuard, get_guard
from agentfleet.tasks.llm._router import call_chain
from agentfleet.tasks.llm._routing import RoutingError, Target, resolve_chain

__all__ = [
    "CallOptions",
    "Completion",
    "ModelToolCall",
    "ProviderGuard",
    "RoutingError",
    "Target",
    "call_chain",
    "complete",
    "get_client",
    "get_guard",
    "request_body",
    "reset_clients",
    "resolve_chain",
    "retry_after_seconds",
    "translate",
]
