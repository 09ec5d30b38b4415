"""``since`` as the CLI (``agentfleet runs --since``) and the run explorer take it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> datetime:
    """``30m``, ``1h``, ``7d`` ago, or an ISO 8601 time; ValueError for anything else."""
    text = text.strip()
    unit = text[-1:]
    if unit in _UNITS and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * _UNITS[unit])
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r}: give a duration (30m, 1h, 7d) or an ISO 8601 time") from None
