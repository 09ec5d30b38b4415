"""Every change agentfleet makes to Celery's and kombu's behaviour, one module per fix.

=====================  ===========  ============================================================
module                 kind         installed in
=====================  ===========  ============================================================
``redis_transport``    correctness  every process on a Redis broker (``broker_transport``): a
                                    worker reconnects after Redis restarts, and keeps a message
                                    taken as Redis went away
``redis_eventloop``    correctness  the same processes, in ``redis_transport``'s channels: a
                                    consumer whose subscription Redis closed reconnects instead
                                    of waiting forever on a new connection
``redact``             correctness  every process (``Celery(amqp=, events=)``): whoever sends a
                                    task makes its ``task-sent`` event and message headers
``rabbitmq``           correctness  every process on RabbitMQ (the app class): whoever sends a
                                    countdown rounds it; workers declare every queue
``result_backend``     leak and     every process (``result_backend`` URL); its worker mode,
                       correctness  which tracks no pending result, in workers only
``controlflow``        speed        worker processes (:func:`install_in_worker`)
``event_batching``     speed        worker processes: their consumer class (``worker_consumer``)
=====================  ===========  ============================================================

Nothing here patches a name of Celery or kombu in a process that is not a worker: the API and
the CLI build the app with Celery's own classes except the subclasses named above, chosen by
configuration. ``tests/test_celery_names.py`` checks that every name a fix overrides or calls
still exists with the parameters it was written against.

:data:`DISABLE_VARIABLE` turns speed fixes off by name, for the bench only (``ops/bench``
measures each against its absence); correctness fixes cannot be turned off.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any, Final

from agentfleet.tasks import keys
from agentfleet.tasks.settings import Settings
from agentfleet.workers.fixes import controlflow, event_batching, result_backend

#: Bench-only knob: a comma-separated list of :data:`SPEED_FIXES` a process leaves out. Not an
#: ``AGENTFLEET_*`` setting on purpose: it never belongs in a deployment, and ``ops.stack``
#: passes it through to every process it starts.
DISABLE_VARIABLE: Final = "DISABLE_AGENTFLEET_FIXES"
#: Fixes that only buy speed, each with its measured gain in its module docstring.
SPEED_FIXES: Final = frozenset({"controlflow", "event_batching"})


def enabled(name: str) -> bool:
    """Whether the speed fix ``name`` is on in this process (:data:`DISABLE_VARIABLE`)."""
    if name not in SPEED_FIXES:
        raise ValueError(f"not a speed fix: {name!r}")
    return name not in _disabled()


@cache
def _disabled() -> frozenset[str]:
    return frozenset(n.strip() for n in os.environ.get(DISABLE_VARIABLE, "").split(","))


def install_in_worker(settings: Settings, conf: Any) -> None:
    """Install the worker-only fixes in this process, a worker's main process before its
    consumer and pool exist (``celeryd_init``, whose ``conf`` the worker reads its consumer
    class from next); pool children inherit them."""
    result_backend.enter_worker_mode(keys.run_prefix(settings.redis.key_prefix))
    if enabled("controlflow"):
        controlflow.install()
    if enabled("event_batching"):
        conf.worker_consumer = event_batching.CONSUMER_PATH


def summary() -> str:
    """What a worker logs once its logging is set up: which fixes it runs."""
    if not result_backend.in_worker_mode():
        return "worker fixes not installed"
    off = sorted(n for n in SPEED_FIXES if not enabled(n))
    return "worker fixes installed" + (f"; speed fixes off: {', '.join(off)}" if off else "")
