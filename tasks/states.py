"""The vocabulary of a run's state machine: its statuses, the legal moves between them, and
what the store's transitions answer; the statuses of tool calls and batches.

A run is created ``queued`` (``create_run.lua``; through the API pending until
``accept.lua`` accepts it), becomes ``running`` when a worker claims its first step
(``begin_step.lua``), may be ``waiting`` for a person between steps (``wait_step.lua``,
``decide.lua``), and ends ``succeeded``, ``failed`` or ``cancelled``. Every move is made by
one Lua script of the store (``tasks/lua/``), named in :data:`TRANSITIONS`; a final run never
moves again. ``docs/run-states.md`` draws the same machine, and ``tests/test_run_states.py``
checks that the drawing and this table agree.

A tool call is created ``queued`` (``create_tool.lua``; a call a run makes or a service sends
by name gets its record when it begins), becomes ``running`` when a worker takes it
(``begin_tool.lua``), and ends ``succeeded``, ``failed`` or ``cancelled`` (``complete_tool.lua``,
``cancel_tool.lua``). A batch is ``queued`` until its dispatch publishes its items (``running``)
and ends ``completed`` once every item is final, or ``cancelled``.

The outcome enums are the replies of the store's claims (:class:`StepOutcome`,
:class:`ToolOutcome`) and of accepting a pending record (:class:`AcceptOutcome`). They are
``StrEnum``: each member equals the string the scripts return.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class RunStatus(StrEnum):
    """A run's ``status`` field."""

    QUEUED = "queued"
    RUNNING = "running"
    #: Waits for a person: an approval of tool calls, or an answer (``waiting.reason``).
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in FINAL


#: The statuses a run ends in; ``is_final`` in ``tasks/lua/_common.lua`` spells the same.
FINAL: Final = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
#: The status a run is created with.
INITIAL: Final = RunStatus.QUEUED


@dataclass(frozen=True)
class Transition:
    """A legal move of a run's status, the scripts that make it, and what causes it."""

    source: RunStatus
    target: RunStatus
    scripts: tuple[str, ...]
    cause: str


#: Every legal move. A run is created :data:`INITIAL` by ``create_run``; nothing leaves
#: :data:`FINAL`.
TRANSITIONS: Final = (
    Transition(
        RunStatus.QUEUED,
        RunStatus.RUNNING,
        ("begin_step",),
        "a worker claims its first step (and, with a tenant cap, a slot)",
    ),
    Transition(
        RunStatus.QUEUED,
        RunStatus.CANCELLED,
        ("cancel_run",),
        "cancelled before any step began (also while it waits for its tenant's slot)",
    ),
    Transition(
        RunStatus.RUNNING,
        RunStatus.SUCCEEDED,
        ("apply_and_finish_step", "finish_step"),
        "the model answers without tool calls",
    ),
    Transition(
        RunStatus.RUNNING,
        RunStatus.FAILED,
        ("apply_and_finish_step", "finish_step"),
        "a permanent provider error, out of steps, a step or tool call whose deliveries are "
        "used up, a tool call lost",
    ),
    Transition(
        RunStatus.RUNNING,
        RunStatus.CANCELLED,
        ("cancel_run",),
        "cancelled by a caller; the step in flight finds it final and drops its answer",
    ),
    Transition(
        RunStatus.RUNNING,
        RunStatus.WAITING,
        ("wait_step",),
        "the model called a tool that needs approval, or asked a person a question",
    ),
    Transition(
        RunStatus.WAITING,
        RunStatus.RUNNING,
        ("decide",),
        "every pending call is decided or answered (or its wait timed out)",
    ),
    Transition(
        RunStatus.WAITING,
        RunStatus.FAILED,
        ("finish_step",),
        "its wait timed out under the policy fail",
    ),
    Transition(
        RunStatus.WAITING,
        RunStatus.CANCELLED,
        ("cancel_run",),
        "cancelled by a caller while it waits",
    ),
)


def legal(source: RunStatus, target: RunStatus) -> bool:
    """Whether a run may move from ``source`` to ``target``."""
    return any(t.source == source and t.target == target for t in TRANSITIONS)


class ToolCallStatus(StrEnum):
    """A tool call's ``status`` field.

    The words are a run's (a batch counts its runs and tool calls under one ``n_<status>``),
    the type is its own: a call's statuses are not moves of the run's machine above."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TOOL_CALL_FINAL


#: The statuses a tool call ends in (``complete_tool.lua`` and ``cancel_tool.lua`` write them).
TOOL_CALL_FINAL: Final = frozenset(
    {ToolCallStatus.SUCCEEDED, ToolCallStatus.FAILED, ToolCallStatus.CANCELLED}
)


class BatchStatus(StrEnum):
    """A batch's ``status`` field (``agentfleet.tasks.batch``)."""

    QUEUED = "queued"
    RUNNING = "running"
    #: Every item is final and the aggregate is stored (some items may have failed).
    COMPLETED = "completed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in BATCH_FINAL


#: The statuses a batch ends in. A cancelled batch is final at once, though items in flight
#: at the cancel may still finish (its ``completed`` count still moves).
BATCH_FINAL: Final = frozenset({BatchStatus.COMPLETED, BatchStatus.CANCELLED})


class StepOutcome(StrEnum):
    """What claiming a run's step found (``begin_step.lua``)."""

    OK = "ok"  # the caller holds the lease
    BUSY = "busy"  # another delivery holds it
    DONE = "done"  # applied and dispatched already
    TERMINAL = "terminal"  # the run is final
    MISSING = "missing"  # no such run (or its pending record expired)
    THROTTLED = "throttled"  # its tenant has no free slot: it waits its turn
    POISONED = "poisoned"  # delivered more than max_redeliveries times
    PENDING = "pending"  # not accepted by the API yet
    ROLLED_BACK = "rolled_back"  # the answer of the step before is gone (a crash of Redis)
    WAITING = "waiting"  # the run waits for a person: the decision resumes it


class ToolOutcome(StrEnum):
    """What claiming a tool call found (``begin_tool.lua``)."""

    OK = "ok"
    BUSY = "busy"
    DONE = "done"  # its result is stored
    CANCELLED = "cancelled"  # its run was cancelled
    PENDING = "pending"
    REFUSED = "refused"  # never accepted by the API: it must not run
    POISONED = "poisoned"
    STALE = "stale"  # its run's step holds an answer of another generation


class AcceptOutcome(StrEnum):
    """What accepting a pending record came to (``accept.lua``; ``sent``: no reply came)."""

    ACCEPTED = "accepted"
    SENT = "sent"
    EXPIRED = "expired"
    ANSWERED = "answered"
    #: A run with thread_policy ``reject`` whose thread has an unfinished run: dropped.
    THREAD_BUSY = "thread_busy"
