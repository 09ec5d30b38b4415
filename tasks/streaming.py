"""Streamed tokens as run events, written at most every ``stream_flush_interval`` seconds.

A model can produce hundreds of tokens a second; one event per token would make the event
stream, not the model, the bottleneck. The relay buffers deltas and appends one ``token``
event per interval, and looks at the run's status while it does: a run cancelled mid-answer
stops the stream instead of paying for the rest of it.
"""

from __future__ import annotations

import json
import time

from agentfleet.tasks import keys
from agentfleet.tasks.errors import RunCancelled
from agentfleet.tasks.states import RunStatus
from agentfleet.tasks.store import RunStore


class TokenRelay:
    """Collects one step's token deltas and writes them as ``token`` events."""

    def __init__(self, store: RunStore, run_id: str, step: int) -> None:
        self.store, self.run_id, self.step = store, run_id, step
        self.interval = store.settings.runs.stream_flush_interval
        self._buffer: list[str] = []
        self._last = time.monotonic()

    def delta(self, text: str) -> None:
        self._buffer.append(text)
        if time.monotonic() - self._last >= self.interval:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._buffer:
            return
        text, self._buffer = "".join(self._buffer), []
        key = self.store.run_key(self.run_id)
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.xadd(
            keys.run_events(self.store.settings.redis.key_prefix, self.run_id),
            {"type": "token", "data": json.dumps({"step": self.step, "text": text})},
            maxlen=self.store.settings.retention.events_max_len,
            approximate=True,
        )
        pipe.hget(key, "status")
        if pipe.execute()[1] == RunStatus.CANCELLED:
            raise RunCancelled(self.run_id)
