"""Public task names. They are part of the wire contract: other services ``send_task`` them."""

from typing import Final

#: Entry point for a whole agent run; its task ID is the run ID from enqueue to final result.
RUN: Final = "agentfleet.run"
#: One LLM step of a run (steps 2..n, dispatched as the body of a tool-call chord).
AGENT_STEP: Final = "agentfleet.agent.step"
#: Errback of a step's tool chord: fails the run when a tool call died outside the tool
#: (killed at its hard time limit), so the run never waits for a chord that cannot finish.
TOOLS_FAILED: Final = "agentfleet.agent.tools_failed"
#: Recovery check after a worker died while completing a tool chord (docs/design.md, "Worker loss").
RESUME: Final = "agentfleet.agent.resume"
#: One tool call; returns ``{"ok": true, "output": ...}`` or ``{"ok": false, "error": ...}``.
TOOL_CALL: Final = "agentfleet.tool.call"
#: Publishes a batch's chord (its items as the header, ``BATCH_COLLECT`` as the body).
BATCH_DISPATCH: Final = "agentfleet.batch.dispatch"
#: Body of a batch's chord: aggregates the items into the batch's final record.
BATCH_COLLECT: Final = "agentfleet.batch.collect"
#: POSTs a finished run's or batch's record to its ``callback_url``, signed.
CALLBACK: Final = "agentfleet.callback"
