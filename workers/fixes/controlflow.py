"""``Ignore`` is control flow, not an error: Celery need not copy and print its traceback.
Nor does :class:`~agentfleet.tasks.errors.RunFailed`, how a run that did not succeed ends its task.

Every step that dispatches tool calls ends in ``Task.replace``, which raises ``Ignore``; the
step of a throttled tenant and a redelivered step that was already applied raise it too.
For each one Celery builds two :class:`~billiard.einfo.ExceptionInfo` objects: each copies
every frame of the traceback, with the code positions of every instruction of the tracer's
large function, and formats the traceback text (Python 3.11 parses the source lines to draw
its carets). The result is only logged as ``Task ... ignored``. That was an eighth of the
``agents`` worker's CPU (py-spy, two-step runs at 2 s LLM latency).

:func:`install` gives Celery's tracer an ``ExceptionInfo`` that keeps ``Ignore`` without its
traceback; every other exception keeps its full traceback, as before. Upstream behaviour:
``celery/app/trace.py`` builds ``ExceptionInfo`` (``billiard/einfo.py``) for every exception a
task raises, ``Ignore`` included (``build_tracer`` -> ``handle_failure`` / ``on_error``).
Without this fix nothing breaks; workers spend the CPU. Speed fix ``controlflow``, installed
in worker processes only; bench switch ``DISABLE_AGENTFLEET_FIXES=controlflow``. Contract:
worth 25% or more of the ``agents`` worker's CPU on (c), ``python -m ops.bench --quick --only
b,c --pools threads`` (on/off CPU ratio 1.25 to 1.52 in four interleaved pairs, mean 1.43).
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery.app import trace
from celery.exceptions import Ignore

from agentfleet.tasks.errors import RunFailed

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class ControlFlowExceptionInfo(ExceptionInfo):
    """An ``ExceptionInfo`` that drops the traceback of ``Ignore`` and ``RunFailed``."""

    def __init__(self, exc_info: ExcInfo | None = None, internal: bool = False) -> None:
        exc_type, exception, tb = exc_info or sys.exc_info()
        if not isinstance(exception, Ignore | RunFailed):
            super().__init__((exc_type, exception, tb), internal)
            return
        self.type = exc_type
        self.tb: Any = None
        self.traceback = f"{type(exception).__name__}: {exception}"
        self.internal = internal
        self.exception = ExceptionWithTraceback(exception, self.traceback)


def install() -> None:
    """Make Celery's tracer use :class:`ControlFlowExceptionInfo` in this process."""
    trace.ExceptionInfo = ControlFlowExceptionInfo
