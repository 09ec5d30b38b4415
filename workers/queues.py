"""Queues, and which task goes to which. Each queue has its own worker pool (docs/design.md)."""

from typing import Final

from kombu.entity import Exchange, Queue

from agentfleet.tasks import names

#: LLM steps: network-bound, served by a high-concurrency I/O pool.
AGENTS: Final = "agents"
#: Tool calls: CPU or blocking work, served by prefork (the only pool enforcing soft limits).
TOOLS: Final = "tools"
#: Chord bodies and collectors: short, kept off the busy queues.
BATCH: Final = "batch"

ALL: Final = (AGENTS, TOOLS, BATCH)

ROUTES: Final[dict[str, dict[str, str]]] = {
    names.RUN: {"queue": AGENTS},
    names.AGENT_STEP: {"queue": AGENTS},
    names.TOOL_CALL: {"queue": TOOLS},
    names.TOOLS_FAILED: {"queue": BATCH},
    names.RESUME: {"queue": BATCH},
    names.BATCH_DISPATCH: {"queue": BATCH},
    names.BATCH_COLLECT: {"queue": BATCH},
    names.CALLBACK: {"queue": BATCH},
}


def declare(*, quorum: bool = False) -> tuple[Queue, ...]:
    """The kombu queue declarations for every agentfleet queue.

    ``quorum`` (RabbitMQ): replicated quorum queues on topic exchanges. Celery's native delayed
    delivery hands a due countdown message back through the queue's exchange, and it cannot
    do that through a direct one (it would hold the message in a worker until its ETA).
    """
    if not quorum:
        return tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in ALL)
    return tuple(
        Queue(
            name,
            Exchange(name, type="topic"),
            routing_key=name,
            queue_arguments={"x-queue-type": "quorum"},
        )
        for name in ALL
    )
