"""What tracing costs a step: ``python -m ops.trace_overhead [--steps 2000] [--repeats 9]``.

A step goes through the tracing helpers of ``agentfleet.tasks.tracing`` each time it runs: the
span around its LLM call (``tasks/llm/_router.py``), the headers its successor's message
carries (``step_signature`` in ``tasks/lifecycle.py``) and the trace IDs of each line it logs
(``workers/logs.py``; a step logs about one). This times ``--steps`` steps' worth of those
calls around a stand-in for the provider call, in CPU time (best of ``--repeats``), three ways:

- ``before``: the provider call alone, as the code was before tracing existed;
- ``off``: through the helpers with tracing off (no OTEL_* variables, the default);
- ``on``: through them with a tracer provider that exports nothing (the SDK's own cost of the
  spans, without the exporter's), when the ``otel`` extra is installed.

Celery's signals (the task spans, the message headers) cost nothing when off: their hooks are
not connected (``tests/test_tracing.py`` checks it). A step's own CPU is 3-4 ms
(docs/performance.md, "Throughput").
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from agentfleet.tasks import tracing
from agentfleet.tasks.llm import Completion

#: The answer of the stand-in provider call, as the simulator gives it.
ANSWER = Completion(
    content="Results: calculator=2",
    prompt_tokens=120,
    completion_tokens=8,
    finish_reason="stop",
    model="sim-1",
    response_id="chatcmpl-1",
)
SETTINGS = {"temperature": 0.2}


def _provider_call() -> Completion:
    return ANSWER


def step_before() -> Completion:
    return _provider_call()


def step_traced() -> Completion:
    with tracing.llm_call("default", "sim-1", "http://127.0.0.1:8799/v1", SETTINGS) as span:
        answer = _provider_call()
        span.answered(answer)
    if trace := tracing.headers():
        answer = Completion(content=str(trace))
    tracing.log_ids()
    return answer


def cpu_ns_per_step(step: Callable[[], Completion], steps: int, repeats: int) -> float:
    """CPU nanoseconds per call of ``step``, the best of ``repeats`` rounds of ``steps``."""
    best = float("inf")
    for _ in range(repeats):
        began = time.process_time_ns()
        for _ in range(steps):
            step()
        best = min(best, (time.process_time_ns() - began) / steps)
    return best


def _tracing_on() -> bool:
    """Turn tracing on in this process with a provider that exports nothing."""
    try:
        from opentelemetry.sdk.trace import TracerProvider

        from agentfleet.tasks._otel import Tracing
    except ImportError:
        return False
    tracing._impl = Tracing(TracerProvider())
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.trace_overhead", description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    assert not tracing.enabled(), "run without OTEL_* variables"
    before = cpu_ns_per_step(step_before, args.steps, args.repeats)
    off = cpu_ns_per_step(step_traced, args.steps, args.repeats)
    print(f"{args.steps} steps, best of {args.repeats}, CPU per step:")
    print(f"  before tracing  {before / 1000:7.2f} us")
    print(f"  tracing off     {off / 1000:7.2f} us  (+{(off - before) / 1000:.2f} us)")
    if _tracing_on():
        on = cpu_ns_per_step(step_traced, args.steps, args.repeats)
        extra = (on - before) / 1000
        print(f"  tracing on      {on / 1000:7.2f} us  (+{extra:.2f} us: the LLM call's span)")


if __name__ == "__main__":
    main()
