"""Response bodies of the HTTP API: the client distribution's models (``agentfleet.client``),
so what the API declares and what the client parses are one definition. Request bodies are
the payload models in ``agentfleet.tasks.models``."""

from agentfleet.client import (
    Accepted,
    AgentList,
    Batch,
    Health,
    ProviderList,
    Run,
    RunPage,
    RunSteps,
    Thread,
    ToolCall,
    ToolList,
    UsageReport,
)

__all__ = [
    "Accepted",
    "AgentList",
    "Batch",
    "Health",
    "ProviderList",
    "Run",
    "RunPage",
    "RunSteps",
    "Thread",
    "ToolCall",
    "ToolList",
    "UsageReport",
]
