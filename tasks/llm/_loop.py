"""One asyncio event loop per process, in a daemon thread, that the pool's threads hand work to.

A thread of the ``threads`` pool that makes an LLM call over the aiohttp transport submits the
call's coroutine here and blocks on its future: hundreds of calls in flight then share one
event loop and its connection pool, which costs about half the CPU per call of each thread
driving its own blocking HTTP request (docs/performance.md, "The LLM client").

- The loop is started on first use, in the process that uses it: a pool child starts its
  own after fork (a forked child has none of its parent's threads; the pid says whose a loop
  is, and the lock guarding the start is made anew in a child).
- The thread is a daemon: a worker that exits does not wait for calls still in flight.
- A caller that stops waiting (an exception in its thread: a soft time limit, a cancelled run
  raising from the streaming callback, a shutdown) cancels its coroutine on the way out, so
  nothing it started outlives it on the loop.
- Values the coroutine relays (a streamed answer's text) are handed to the waiting thread,
  which passes them to its callback: the callback runs where it would without the loop, and
  its blocking work (a Redis write) never stalls the loop that every other call shares.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What a coroutine is given to relay a value to the thread that waits for it.
Relay = Callable[[str], None]


class _LoopThread:
    """An event loop running forever in a daemon thread of this process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="agentfleet-llm-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()


_current: _LoopThread | None = None
_lock = threading.Lock()


def _forget_after_fork() -> None:
    # The child has no loop thread, and a lock some other thread held at fork stays held.
    global _current, _lock
    _current = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def loop() -> asyncio.AbstractEventLoop:
    """This process's loop, started on first use."""
    global _current
    current = _current
    if current is not None and current.pid == os.getpid():
        return current.loop
    with _lock:
        if _current is None or _current.pid != os.getpid():
            _current = _LoopThread()
            log.info("LLM calls of process %d run on its aiohttp event loop", _current.pid)
        return _current.loop


def running_loop() -> asyncio.AbstractEventLoop | None:
    """This process's loop if it was started, else None (never starts one)."""
    current = _current
    return current.loop if current is not None and current.pid == os.getpid() else None


def tasks_in_flight() -> int:
    """Coroutines running on this process's loop now (0 without a loop); for tests."""
    running = running_loop()
    if running is None:
        return 0
    found: Future[int] = asyncio.run_coroutine_threadsafe(_count_tasks(), running)
    return found.result(timeout=5)


async def _count_tasks() -> int:
    return len(asyncio.all_tasks()) - 1  # less this one


def run(
    work: Callable[[Relay | None], Coroutine[Any, Any, T]],
    on_relayed: Callable[[str], None] | None = None,
) -> T:
    """Run ``work(relay)`` on this process's loop and wait for its result in this thread.

    ``relay`` is None unless ``on_relayed`` is given; each value the coroutine relays is then
    passed to ``on_relayed`` in this thread, in order, before the result is returned. If this
    thread stops waiting for any reason, including an exception from ``on_relayed``, the
    coroutine is cancelled before the exception goes on.
    """
    if on_relayed is None:
        future = asyncio.run_coroutine_threadsafe(work(None), loop())
        try:
            return future.result()
        finally:
            future.cancel()  # a no-op once done; stops the call when this thread gave up
    # None ends the values: what is relayed is text, never None.
    relayed: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    future = asyncio.run_coroutine_threadsafe(work(relayed.put), loop())
    # Called on the loop once the coroutine ended: after every value it relayed.
    future.add_done_callback(lambda _: relayed.put(None))
    try:
        while (value := relayed.get()) is not None:
            on_relayed(value)
        return future.result()
    finally:
        future.cancel()
