"""Token and cost budgets: what each LLM call costs, and the budgets checked before it.

Every LLM call is priced at its provider's price for the model that answered
(``ProviderConfig.prices``, US dollars per million tokens; a model with no price costs 0).
Its cost goes on the run's record and on its ``llm_call_finished`` event, and on its
tenant's day (:func:`agentfleet.tasks.keys.tenant_spend`) and the spend metrics.

Budgets are checked before each call, against an estimate of it: the prompt's tokens as
:mod:`agentfleet.tasks.window` counts them, plus the call's ``max_tokens`` (else
``budget_completion_estimate``), priced at the dearest model of the run's chain.

- **A run's own** (``max_total_tokens``, ``max_cost``): a run has one step in flight at a time
  and a step makes its calls one after another, so the run's usage so far (its record, and the
  step's calls before this one) plus the estimate is checked in the worker, with no round
  trip. Over the budget, the run ends ``failed`` with ``budget_exceeded``.
- **A tenant's per day** (``tenant_budgets``): many runs spend it at once, so the estimate is
  reserved fleet-wide by one script (``reserve_spend.lua``) that checks what the day used and
  what calls in flight hold, and holds the estimate; the call's actual usage replaces the hold
  when it returns (``settle_spend.lua``). Concurrent runs therefore overshoot the budget only
  by what the calls in flight use beyond their estimates. A hold whose worker died lapses after
  the step's time limit. Refused, a run fails with ``budget_exceeded``, or with
  ``budget_policy: wait`` waits, holding no worker, until the day's budget resets (midnight
  UTC); new runs of the tenant get 429 until then.

Without a tenant budget, a call reserves nothing, and the step's usage is counted for the
tenant in the same script that applies the step's answer: the plain path makes no round trip
more.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from agentfleet.tasks import keys, window
from agentfleet.tasks.errors import BudgetExceeded
from agentfleet.tasks.llm._routing import Target
from agentfleet.tasks.metrics import label_field
from agentfleet.tasks.records import RunRecord
from agentfleet.tasks.scripts import RESERVE_SPEND, SETTLE_SPEND
from agentfleet.tasks.setting_groups import ModelPrice, TenantBudget
from agentfleet.tasks.settings import Settings

#: Days a tenant's spend is kept (``GET /v1/usage?day=`` reaches this far back).
KEEP_DAYS = 8


def day_of(now: float) -> str:
    """The UTC day of the Unix time ``now``, as ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def resets_at(now: float) -> float:
    """When the day of ``now`` ends: the next midnight UTC, as a Unix time."""
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).timestamp()


def iso_time(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def price_of(settings: Settings, target: Target) -> ModelPrice | None:
    provider = next((p for p in settings.llm.provider_list if p.name == target.provider), None)
    return provider.price(target.model) if provider is not None else None


def call_cost(
    settings: Settings, target: Target, prompt: int, completion: int, cached: int = 0
) -> float:
    """What a call answered by ``target`` cost (0 when its model has no price)."""
    price = price_of(settings, target)
    return price.cost(prompt, completion, cached) if price is not None else 0.0


@dataclass(frozen=True)
class Estimate:
    """What a call is expected to use, before it is made."""

    tokens: int
    cost: float


def estimate(
    settings: Settings,
    chain: Iterable[Target],
    messages: list[dict[str, Any]],
    tool_schemas: list[dict[str, Any]],
    max_tokens: int | None,
) -> Estimate:
    """The estimate of a call of ``messages`` with ``tool_schemas`` to any link of ``chain``:
    the dearest link's price, since the call may fall back to it."""
    links = list(chain)
    counter = window.counter_for(links[0].model) if links else window.estimate
    prompt = window.count(messages, counter)
    if tool_schemas:
        prompt += window.estimate(json.dumps(tool_schemas))
    completion = max_tokens or settings.tenants.budget_completion_estimate
    cost = max((call_cost(settings, t, prompt, completion) for t in links), default=0.0)
    return Estimate(prompt + completion, cost)


def run_refusal(run: RunRecord, spent_tokens: int, spent_cost: float, est: Estimate) -> str | None:
    """Why the run's own budget refuses a call of ``est``, after the run's recorded usage and
    ``spent_*`` of its current step; None if it does not."""
    used = run.usage.total_tokens + spent_tokens
    if run.max_total_tokens is not None and used + est.tokens > run.max_total_tokens:
        return (
            f"the run has used {used} of its {run.max_total_tokens} tokens "
            f"(max_total_tokens), and its next LLM call needs about {est.tokens}"
        )
    cost = run.usage.cost + spent_cost
    if run.max_cost is not None and cost + est.cost > run.max_cost:
        return (
            f"the run has spent ${cost:.6f} of its ${run.max_cost:.6f} (max_cost), and its "
            f"next LLM call may cost about ${est.cost:.6f}"
        )
    return None


@dataclass(frozen=True)
class Usage:
    """What one call (or a step's calls to one model) used."""

    target: Target
    prompt: int
    completion: int
    cached: int
    cost: float
    #: Provider calls made (0 for an answer from the response cache).
    calls: int = 1
    #: An answer from the response cache (agentfleet.tasks.llm_cache): it cost nothing.
    hit: bool = False

    @classmethod
    def cache_hit(cls, target: Target) -> Usage:
        return cls(target, 0, 0, 0, 0.0, calls=0, hit=True)

    def __add__(self, other: Usage) -> Usage:
        """The two summed (for the same target)."""
        return Usage(
            self.target,
            self.prompt + other.prompt,
            self.completion + other.completion,
            self.cached + other.cached,
            self.cost + other.cost,
            self.calls + other.calls,
            self.hit and other.hit,
        )

    def spend(self, settings: Settings, tenant: str, now: float) -> dict[str, Any]:
        """The table ``spend(s)`` of ``_spend.lua`` takes for this usage."""
        p, model = settings.redis.key_prefix, self.target.model
        return {
            "day": keys.tenant_spend(p, tenant, day_of(now)),
            "metric": keys.MetricKeys(p).spend,
            "ttl": KEEP_DAYS * 86_400,
            "tokens": self.prompt + self.completion,
            "cost": self.cost,
            "prompt": self.prompt,
            "completion": self.completion,
            "cached": self.cached,
            "calls": self.calls,
            "fields": {kind: label_field(model, kind) for kind in ("tokens", "cost", "calls")},
            "metrics": {
                kind: label_field(tenant, model, kind)
                for kind in ("prompt", "completion", "cached", "calls", "cost")
            },
        }


@dataclass(frozen=True)
class Reservation:
    """An estimate held against a tenant's day until the call is settled."""

    id: str
    tenant: str
    day: str


class TenantBudgets:
    """Reserves and settles calls against tenants' daily budgets (one per process)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis, self.settings = client, settings
        self._reserve = client.register_script(RESERVE_SPEND)
        self._settle = client.register_script(SETTLE_SPEND)

    def _keys(self, tenant: str, day: str) -> list[str]:
        p = self.settings.redis.key_prefix
        return [keys.tenant_spend(p, tenant, day), keys.tenant_spend_held(p, tenant, day)]

    def reserve(self, tenant: str, budget: TenantBudget, est: Estimate) -> Reservation:
        """Hold ``est`` against ``tenant``'s day; :class:`BudgetExceeded` if it does not fit."""
        now = time.time()
        held = Reservation(uuid.uuid4().hex, tenant, day_of(now))
        reply = self._reserve(
            keys=self._keys(tenant, held.day),
            args=[
                json.dumps(
                    {
                        "now": now,
                        "id": held.id,
                        "tokens": est.tokens,
                        "cost": est.cost,
                        # A worker that dies holding it cannot settle: the step's hard limit
                        # is as long as a call can be in flight.
                        "lapses": now + self.settings.limits.step_time_limit,
                        "ttl": KEEP_DAYS * 86_400,
                        "limit_tokens": budget.tokens_per_day or 0,
                        "limit_cost": budget.cost_per_day or 0,
                    }
                )
            ],
        )
        if reply[0] != "ok":
            raise tenant_exhausted(tenant, str(reply[0]), float(reply[1]), float(reply[2]), now)
        return held

    def settle(self, held: Reservation, used: Usage | None) -> None:
        """Release ``held`` and count what the call ``used`` (None: it failed, using nothing)."""
        spend = used.spend(self.settings, held.tenant, time.time()) if used else None
        if spend is not None:
            # Counted on the day the call was reserved, with its hold.
            spend["day"] = self._keys(held.tenant, held.day)[0]
        self._settle(
            keys=self._keys(held.tenant, held.day),
            args=[json.dumps({"id": held.id, "spend": spend})],
        )


def tenant_exhausted(
    tenant: str, kind: str, used: float, limit: float, now: float
) -> BudgetExceeded:
    """The error of a tenant whose day's ``kind`` budget (``tokens`` or ``cost``) is spent."""
    reset = resets_at(now)
    if kind == "tokens":
        spent = f"{int(used)} of its {int(limit)} tokens per day (tokens_per_day)"
    else:
        spent = f"${used:.6f} of its ${limit:.6f} per day (cost_per_day)"
    return BudgetExceeded(
        f"tenant {tenant!r} has used or holds {spent}; it resets at {iso_time(reset)}", reset
    )


def usage_report(
    client: redis.Redis, settings: Settings, tenant: str, day: str | None = None
) -> dict[str, Any]:
    """``GET /v1/usage``: what ``tenant`` spent on ``day`` (default: today, UTC), per model,
    what calls in flight hold, and its budget."""
    now = time.time()
    day = day or day_of(now)
    found: Mapping[str, str] = client.hgetall(
        keys.tenant_spend(settings.redis.key_prefix, tenant, day)
    )  # type: ignore[assignment]
    models: dict[str, dict[str, Any]] = {}
    for name, value in found.items():
        if not name.startswith("["):
            continue
        model, kind = json.loads(name)
        entry = models.setdefault(model, {"model": model, "tokens": 0, "cost": 0.0, "calls": 0})
        entry[kind] = float(value) if kind == "cost" else int(float(value))
    budget = settings.tenants.tenant_budget(tenant)
    return {
        "tenant": tenant,
        "day": day,
        "tokens": int(float(found.get("tokens") or 0)),
        "cost": round(float(found.get("cost") or 0), 9),
        "calls": int(float(found.get("calls") or 0)),
        "held_tokens": max(int(float(found.get("held_tokens") or 0)), 0),
        "held_cost": round(max(float(found.get("held_cost") or 0), 0.0), 9),
        "models": sorted(models.values(), key=lambda m: str(m["model"])),
        "budget": budget.model_dump() if budget else None,
        "resets_at": iso_time(resets_at(now)) if day == day_of(now) else None,
    }


def tenant_refusal(client: redis.Redis, settings: Settings, tenant: str) -> BudgetExceeded | None:
    """Why ``tenant`` may start no new run now (its day's budget is spent), or None."""
    budget = settings.tenants.tenant_budget(tenant)
    if budget is None:
        return None
    now = time.time()
    fields = client.hmget(
        keys.tenant_spend(settings.redis.key_prefix, tenant, day_of(now)),
        ["tokens", "held_tokens", "cost", "held_cost"],
    )
    tokens = sum(int(float(v or 0)) for v in fields[:2])
    cost = sum(float(v or 0) for v in fields[2:])
    if budget.tokens_per_day is not None and tokens >= budget.tokens_per_day:
        return tenant_exhausted(tenant, "tokens", tokens, budget.tokens_per_day, now)
    if budget.cost_per_day is not None and cost >= budget.cost_per_day:
        return tenant_exhausted(tenant, "cost", cost, budget.cost_per_day, now)
    return None
