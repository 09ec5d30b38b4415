"""What every section shares: sizes, pools, prompts, percentiles and tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ops.stack import PoolSpec

#: A plain prompt: the simulator answers it in one step ("Echo: ..."), no tool call.
ONE_STEP_PROMPT = "bench"
#: Two steps without latency (one ``text_stats`` call, then the answer): warms the whole path.
WARM_TWO_STEP_PROMPT = 'call text_stats {"text": "x"}'
#: Threads submitting runs (or plain tasks) when a section enqueues many at once.
ENQUEUE_THREADS = 16
#: The ``tools`` pool of every configuration: tool calls are CPU work, served by prefork.
TOOLS_POOL = PoolSpec("tools", "prefork", 2)
#: The ``batch`` pool of the fleet's configurations in sections (b) and (c), as a fleet runs it.
BATCH_POOL = PoolSpec("batch", "prefork", 1)


# --- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """How much work each section does."""

    latency_n: int
    backlog_m: int
    runs_r: int
    prefork_runs: int
    prefork_wide_runs: int
    accept_n: int
    chord_reps: int
    park_runs: tuple[int, ...]
    #: Section (g): runs of each variant per round, and rounds. Short rounds, many of them: the
    #: CPU a run costs on a shared machine drifts within tens of seconds.
    features_n: int
    features_rounds: int


FULL = Sizes(
    latency_n=500,
    backlog_m=3000,
    runs_r=2000,
    prefork_runs=40,
    prefork_wide_runs=400,
    accept_n=3000,
    chord_reps=10,
    park_runs=(100, 500, 1000),
    features_n=30,
    features_rounds=40,
)
QUICK = Sizes(
    latency_n=100,
    backlog_m=600,
    runs_r=200,
    prefork_runs=8,
    prefork_wide_runs=128,
    accept_n=500,
    chord_reps=3,
    park_runs=(50,),
    features_n=25,
    features_rounds=8,
)


@dataclass(frozen=True)
class AgentsPool:
    """The ``agents`` side of a configuration: ``processes`` workers of ``pool -c concurrency``."""

    pool: str
    concurrency: int
    processes: int = 1
    #: The workers' ``AGENTFLEET_LLM_TRANSPORT``; empty: the fleet's default, unnamed.
    transport: str = ""

    @property
    def label(self) -> str:
        """How tables name the configuration, e.g. ``gevent 2x1000`` or ``threads 2x500
        httpx``."""
        label = f"{self.pool} {self.processes}x{self.concurrency}"
        return f"{label} {self.transport}" if self.transport else label

    @property
    def slots(self) -> int:
        """Tasks the configuration can run at once."""
        return self.processes * self.concurrency


#: The pool family of the fleet's own ``agents`` workers (chosen by section c): the one the
#: latency target is read against.
FLEET_AGENTS_POOL = "threads"

#: How tables name stock Celery running the same LLM calls (:mod:`ops.bench_plain`): a floor.
PLAIN_LLM = "plain Celery + openai (floor)"


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(pct / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def fmt(value: object, digits: int = 1) -> str:
    """A table cell: floats rounded, NaN as a dash."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:,.{digits}f}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with a title line."""
    cells = [list(headers), *[[fmt(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [title, ""]
    for index, row in enumerate(cells):
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when either is missing or the denominator is 0."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def verdict(met: bool) -> str:
    """How a table says whether a target is met."""
    return "met" if met else "NOT met"


def cpu_cell(cpu: dict[str, float], name: str) -> float:
    """CPU seconds of ``name`` in a result, NaN when it was not measured."""
    return cpu.get(name, math.nan)


#: The process groups whose CPU is what a configuration costs: its Celery workers (``workers``
#: for stock Celery's one pool), the API and Redis. The simulator stands for a provider, whose
#: CPU is remote, and the bench's own process (``bench``) for the callers.
FLEET_CPU = ("workers", "agents", "tools", "batch", "api", "redis")


def fleet_cpu_s(cpu: dict[str, float]) -> float:
    """CPU seconds a configuration's own processes spent (:data:`FLEET_CPU`); NaN when not
    measured."""
    if not cpu:
        return math.nan
    return sum(cpu.get(name, 0.0) for name in FLEET_CPU)


def ms_per(seconds: float, items: int) -> float:
    """``seconds`` of CPU per item, in milliseconds; NaN for no items."""
    return seconds * 1000 / items if items > 0 else math.nan
