"""The worker's garbage collector, tuned for processes that hold hundreds of tasks in flight.

An ``agents`` worker keeps every in-flight step's objects alive across many young
collections, so they reach the oldest generation and make it grow, and each full collection
then walks the whole heap, the ~150,000 objects of Celery, kombu, pydantic and the openai SDK
that live as long as the process included, in pauses that stop all of its threads. Freezing
the heap once start-up is done moves those objects out of the collector's sight (what that
saved is in docs/changelog.md). In a prefork child it also keeps the collector from writing to
pages it shares with its parent. Without it nothing breaks; full collections take longer.
Speed fix ``heap``, run in worker processes only; bench switch
``DISABLE_AGENTFLEET_FIXES=heap``.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect once, then exempt every object alive now from future collections."""
    gc.collect()
    gc.freeze()
