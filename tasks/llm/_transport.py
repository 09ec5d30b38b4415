"""The HTTP transport of the LLM clients: a small connection pool per thread.

httpcore's connection pool walks every one of its connections, under one lock, twice per
request: to assign the request a connection, and again when the response is closed. Shared by
the hundreds of threads of an ``agents`` worker, with a connection per LLM call in flight, that
walk and the wait for its lock were about a sixth of the worker's CPU. A thread makes one LLM
call at a time, so a pool of its own holds one or two connections and never waits for another
thread.

Under gevent or eventlet a "thread" is a greenlet, one per task: a pool per greenlet would open
a connection per call, so those workers keep one shared pool.
"""

from __future__ import annotations

import sys
import threading
import weakref
from types import TracebackType

import httpx2

#: Connections a thread keeps: it makes one call at a time, and a fallback to another model of
#: the same provider reuses the same connection.
KEEPALIVE_PER_THREAD = 2


def threads_are_greenlets() -> bool:
    """True in a process whose ``threading`` gevent or eventlet has monkey-patched."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("threading"):
        return True
    eventlet_patcher = sys.modules.get("eventlet.patcher")
    return eventlet_patcher is not None and bool(eventlet_patcher.is_monkey_patched("thread"))


class _ThreadEnd:
    """Kept in a thread's locals only, so it dies when its thread does."""


class PerThreadTransport(httpx2.BaseTransport):
    """An ``httpx2`` transport that gives each calling thread its own connection pool.

    Every pool shares one TLS context: building one loads the CA bundle, which is far more
    work than a request.
    """

    def __init__(self, keepalive_expiry: float) -> None:
        self._limits = httpx2.Limits(
            max_connections=None,
            max_keepalive_connections=KEEPALIVE_PER_THREAD,
            keepalive_expiry=keepalive_expiry,
        )
        self._ssl_context = httpx2.create_ssl_context()
        self._local = threading.local()
        self._lock = threading.Lock()
        # Weak: a thread that ends drops its pool with its thread-local, sockets and all.
        self._pools: weakref.WeakSet[httpx2.HTTPTransport] = weakref.WeakSet()
        self._closed = False

    def _pool(self) -> httpx2.HTTPTransport:
        pool: httpx2.HTTPTransport | None = getattr(self._local, "pool", None)
        if pool is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the HTTP transport is closed")
                pool = httpx2.HTTPTransport(verify=self._ssl_context, limits=self._limits)
                self._pools.add(pool)
            self._local.pool = pool
            # The thread's locals die with it: close its connections then, not when the
            # collector finds the sockets.
            self._local.end = _ThreadEnd()
            weakref.finalize(self._local.end, pool.close)
        return pool

    @property
    def pools(self) -> int:
        """How many threads have a pool (for tests and diagnostics)."""
        with self._lock:
            return len(self._pools)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self._pool().handle_request(request)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pools = list(self._pools)
            self._pools.clear()
        for pool in pools:
            pool.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()
