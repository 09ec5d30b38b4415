"""The producer side: HTTP API (``producer.api``), Python client and CLI."""

from producer.client import ApiError, Client

__all__ = ["ApiError", "Client"]
