"""Does the breaker cap concurrency? 100 concurrent LLM calls through one breaker, one process.

``python -m ops.bench_breaker [--calls 100] [--latency 0.5] [--naive 10]``

Runs in one gevent-patched process, as an ``agents`` worker does, against the simulator:

- agentfleet's guard (Lua admission, outcome replayed through pybreaker afterwards):
  the wall time should be about one call's latency;
- the same provider called inside ``pybreaker.CircuitBreaker.call()`` (which holds its lock
  for the whole call): the calls run one at a time. Fewer calls are made this way, since each
  one costs a full latency.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after monkey-patching, as in a gevent worker)
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

from agentfleet.tasks.llm import Target, call_chain, complete, get_guard  # noqa: E402
from agentfleet.tasks.setting_groups import LlmSettings, ProviderConfig, RedisSettings  # noqa: E402
from agentfleet.tasks.settings import Settings  # noqa: E402
from ops.stack import Stack  # noqa: E402

MESSAGES = [{"role": "user", "content": "hello"}]


def _timed(n: int, call: Callable[[], object]) -> float:
    start = time.perf_counter()
    jobs = [gevent.spawn(call) for _ in range(n)]
    gevent.joinall(jobs, raise_error=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench_breaker", description=__doc__)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--naive", type=int, default=10, help="calls through breaker.call()")
    args = parser.parse_args(argv)
    with Stack(Path(tempfile.mkdtemp(prefix="af-breaker-"))) as stack:
        redis_url = stack.start_redis()
        sim = stack.start_simulator(latency=args.latency).removesuffix("/v1")
        provider = ProviderConfig(name="a", base_url=f"{sim}/p/a/v1", timeout=30)
        settings = Settings(
            redis=RedisSettings(redis_url=redis_url), llm=LlmSettings(providers=[provider])
        )
        chain = [Target("a", "sim-1")]
        guard = get_guard(settings, provider)
        call_chain(settings, chain, MESSAGES, [])  # warm up the client and scripts

        ours = _timed(args.calls, lambda: call_chain(settings, chain, MESSAGES, []))
        naive = _timed(
            args.naive, lambda: guard.breaker.call(complete, provider, MESSAGES, [], "sim-1")
        )
        print(f"LLM latency {args.latency:.2f}s, one worker process (gevent)")
        print(
            f"  agentfleet guard:     {args.calls:>4} concurrent calls in {ours:6.2f}s "
            f"= {ours / args.latency:5.2f} x one call's latency"
        )
        print(
            f"  pybreaker .call():    {args.naive:>4} concurrent calls in {naive:6.2f}s "
            f"= {naive / args.latency:5.2f} x one call's latency (serialised by its lock)"
        )
        after = guard.snapshot()
        print(f"  state after: {after['state']}, failures {after['failures']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
