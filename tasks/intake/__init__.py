"""Taking work in: check a request once, write it, publish it, accept it.

Both ways in go through here. The API (:mod:`agentfleet.producer.api`) checks a request with
:func:`admit_run`, :func:`admit_tool_call` or :func:`admit_batch`, which answer with the
request typed and its provider chains resolved, or raise
:class:`~agentfleet.tasks.errors.InvalidRequest`; then :func:`submit_run`,
:func:`submit_tool_call` or :func:`submit_batch` write it, publish it and accept it. A
``send_task("agentfleet.run")`` caller's message is published already: its task hands the
payload to :func:`take_sent_run`, which checks it the same way and writes it accepted.

A submit makes three writes: the records, pending; the message; and the acceptance, one
script that also keeps the Idempotency-Key's answer. No worker starts pending work: it holds
the message until the work is accepted, or drops it once the records expire
(``AGENTFLEET_PENDING_TTL``). Redis may apply any of these writes late (paused, it buffers what
it is sent), so a submit raises :class:`~agentfleet.tasks.errors.Unavailable` (a 503) only when
the acceptance was never sent, and returns once it was, even without a reply: Redis applies
it when it answers again.
"""

from agentfleet.tasks.intake._checks import (
    MAX_BATCH_PROBLEMS,
    AdmittedBatch,
    AdmittedRun,
    Problems,
    admit_batch,
    admit_run,
    admit_tool_call,
    batch_transcript_problems,
    callback_problems,
    resolve_tools,
    transcript_problems,
)
from agentfleet.tasks.intake._submit import (
    AnswerSlot,
    accepted_body,
    submit_batch,
    submit_run,
    submit_tool_call,
    take_sent_run,
    tool_call_key,
)

__all__ = [
    "MAX_BATCH_PROBLEMS",
    "AdmittedBatch",
    "AdmittedRun",
    "AnswerSlot",
    "Problems",
    "accepted_body",
    "admit_batch",
    "admit_run",
    "admit_tool_call",
    "batch_transcript_problems",
    "callback_problems",
    "resolve_tools",
    "submit_batch",
    "submit_run",
    "submit_tool_call",
    "take_sent_run",
    "tool_call_key",
    "transcript_problems",
]
