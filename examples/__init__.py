"""Runnable examples of multi-agent patterns on agentfleet (see README.md here)."""
