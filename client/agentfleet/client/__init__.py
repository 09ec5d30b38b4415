"""The Python client of the agentfleet HTTP API: :class:`Client` (sync) and
:class:`AsyncClient` (asyncio), with the same methods, typed answers and one exception tree
(``ClientError``, see ``_errors``). Needs httpx and pydantic only.

::

    from agentfleet.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        run = client.wait(client.create_run("What is 6*7?").id)
        print(run.status, run.result)
"""

from agentfleet.client._async import AsyncClient
from agentfleet.client._core import DEFAULT_TIMEOUT, EVENTS_TIMEOUT, BatchOptions, RunOptions
from agentfleet.client._errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    RunError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unreachable,
    WaitTimeout,
)
from agentfleet.client._models import (
    RUN_FINAL,
    TOOL_CALL_FINAL,
    Accepted,
    AgentInfo,
    AgentList,
    AgentNode,
    Batch,
    BatchCounts,
    BatchItemView,
    ErrorInfo,
    Event,
    Health,
    LimiterFill,
    Links,
    ModelSpend,
    NodeInfo,
    Progress,
    ProviderList,
    ProviderState,
    Run,
    TenantBudget,
    Thread,
    ThreadRun,
    ToolCall,
    ToolInfo,
    ToolList,
    ToolNode,
    Usage,
    UsageReport,
    Waiting,
)
from agentfleet.client._sync import Client

__all__ = [
    "DEFAULT_TIMEOUT",
    "EVENTS_TIMEOUT",
    "RUN_FINAL",
    "TOOL_CALL_FINAL",
    "Accepted",
    "AgentInfo",
    "AgentList",
    "AgentNode",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Batch",
    "BatchCounts",
    "BatchItemView",
    "BatchOptions",
    "Client",
    "ClientError",
    "Conflict",
    "ErrorInfo",
    "Event",
    "Health",
    "InvalidRequest",
    "LimiterFill",
    "Links",
    "ModelSpend",
    "NodeInfo",
    "NotFound",
    "PayloadTooLarge",
    "Progress",
    "ProtocolError",
    "ProviderList",
    "ProviderState",
    "Run",
    "RunError",
    "RunOptions",
    "TenantBudget",
    "Thread",
    "ThreadRun",
    "TooManyRequests",
    "ToolCall",
    "ToolInfo",
    "ToolList",
    "ToolNode",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "Usage",
    "UsageReport",
    "WaitTimeout",
    "Waiting",
]
