"""The LLM provider layer: one client per provider per process, one error boundary."""

from tasks.llm._call import Completion, ModelToolCall, complete, retry_after_seconds, translate
from tasks.llm._client import get_client, reset_clients

__all__ = [
    "Completion",
    "ModelToolCall",
    "complete",
    "get_client",
    "reset_clients",
    "retry_after_seconds",
    "translate",
]
