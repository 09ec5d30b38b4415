"""The producer side: HTTP API (``agentfleet.producer.api``), Python client and CLI."""

from agentfleet.producer.client import ApiError, Client

__all__ = ["ApiError", "Client"]
