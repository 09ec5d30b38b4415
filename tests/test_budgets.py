"""Token and cost budgets: prices make every call's cost, on the run, its events, the tenant's
day and the metrics; a run's own budget ends it before a call that would pass it; a tenant's
daily budget holds fleet-wide under concurrent runs, refuses new runs with 429, and a run may
wait for it to reset."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agentfleet.client import Client, TooManyRequests
from agentfleet.tasks import spend
from agentfleet.tasks.llm import Target
from agentfleet.tasks.settings import Settings
from ops.stack import PoolSpec, Stack
from tests.conftest import Fleet, private_fleet

#: Dollars per million tokens of the simulator's default model.
PRICES = {"sim-1": {"input": 2.0, "cached_input": 0.5, "output": 8.0}}
#: Completion tokens a budgeted call reserves: above what the scripted calls below use, so
#: their estimates cover them.
COMPLETION_ESTIMATE = 300
BUDGETS = {
    "thrifty": {"tokens_per_day": 3000},
    "overrun": {"tokens_per_day": 3000},
    "tiny": {"tokens_per_day": 500},
    "patient": {"tokens_per_day": 500},
    "frugal": {"cost_per_day": 0.003},
}


@pytest.fixture(scope="module")
def bfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    def start(stack: Stack) -> None:
        stack.env_overrides = {
            "AGENTFLEET_TOOL_MODULES": "tests.tooling",
            "AGENTFLEET_AGENT_MODULES": "tests.agents",
            "AGENTFLEET_LLM_PRICES": json.dumps(PRICES),
            "AGENTFLEET_TENANT_BUDGETS": json.dumps(BUDGETS),
            "AGENTFLEET_BUDGET_COMPLETION_ESTIMATE": str(COMPLETION_ESTIMATE),
        }
        stack.start_fleet(
            pools=(PoolSpec("agents", "threads", 60), PoolSpec("tools", "prefork", 2))
        )

    with private_fleet(Stack(Path(tmp_path_factory.mktemp("budgets"))), start, 2) as fleet:
        yield fleet


@pytest.fixture
def tenant(bfleet: Fleet) -> Iterator[Callable[[str], Client]]:
    """Clients with API keys of the tenants named, closed afterwards."""
    made: list[Client] = []

    def client_of(name: str) -> Client:
        made.append(bfleet.client_of(name))
        return made[-1]

    yield client_of
    for client in made:
        client.close()


def _events(client: Client, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [e.data for e in client.events(run_id) if e.type == kind]


def _metric(fleet: Fleet, name: str, **labels: str) -> float:
    value = fleet.metric(name, **labels)
    assert value is not None, f"no {name}{labels} in /metrics"
    return value


def test_every_call_is_priced_on_the_run_its_events_the_tenant_and_the_metrics(
    bfleet: Fleet,
    tenant: Callable[[str], Client],
) -> None:
    client = tenant("pricey")
    # Two steps: a tool call, then the answer; each reports 1000 prompt tokens (800 of them
    # from the provider's cache) and 50 completion tokens.
    run = client.run('call async_double {"n": 2} [[usage:1000,50,800]]', timeout=60)
    assert run.status == "succeeded", run.error
    per_call = (200 * 2.0 + 800 * 0.5 + 50 * 8.0) / 1e6
    assert run.usage.llm_calls == 2
    assert run.usage.cached_tokens == 1600
    assert run.usage.cost == pytest.approx(2 * per_call)
    costs = [e["cost"] for e in _events(client, run.id, "llm_call_finished")]
    assert costs == pytest.approx([per_call, per_call])
    usage = client.usage()
    assert (usage.tenant, usage.tokens, usage.calls) == ("pricey", 2100, 2)
    assert usage.cost == pytest.approx(2 * per_call)
    assert [(m.model, m.tokens, m.calls) for m in usage.models] == [("sim-1", 2100, 2)]
    assert usage.budget is None
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    assert usage.resets_at == f"{tomorrow}T00:00:00Z"
    labels = {"tenant": "pricey", "model": "sim-1"}
    assert _metric(bfleet, "agentfleet_tenant_cost_usd_total", **labels) == pytest.approx(
        2 * per_call
    )
    assert _metric(bfleet, "agentfleet_tenant_tokens_total", kind="cached", **labels) == 1600
    assert _metric(bfleet, "agentfleet_tenant_tokens_total", kind="prompt", **labels) == 2000
    assert _metric(bfleet, "agentfleet_tenant_llm_calls_total", **labels) == 2


def test_runs_tokens_and_cost_are_counted_per_agent(
    bfleet: Fleet, tenant: Callable[[str], Client]
) -> None:
    client = tenant("agent-spender")

    def metric(name: str, **labels: str) -> float:
        return bfleet.metric(name, **labels) or 0.0

    names = ("agentfleet_agent_runs_finished_total", "agentfleet_agent_tokens_total")
    # Every agent the API has is served from the start, zeros included.
    assert bfleet.metric(names[0], agent="strict_json", status="cancelled") is not None
    before = {
        (name, agent, label): metric(name, agent=agent, **{key: label})
        for name, key, labels in (
            (names[0], "status", ("succeeded", "failed")),
            (names[1], "kind", ("prompt", "completion", "cached")),
        )
        for agent in ("echo", "")
        for label in labels
    }
    cost_before = {a: metric("agentfleet_agent_cost_usd_total", agent=a) for a in ("echo", "")}
    usage = "[[usage:1000,50,800]]"
    runs = [
        client.create_run(f"hello {usage}", agent="echo"),
        client.create_run(f"again {usage}", agent="echo"),
        client.create_run("[[error:400]] broken", agent="echo"),
        client.create_run(f"ad hoc {usage}", tools=[]),
    ]
    done = [client.wait(r.id, timeout=60) for r in runs]
    assert [r.status for r in done] == ["succeeded", "succeeded", "failed", "succeeded"]

    def grew(name: str, agent: str, key: str, label: str) -> float:
        return metric(name, agent=agent, **{key: label}) - before[(name, agent, label)]

    assert grew(names[0], "echo", "status", "succeeded") == 2
    assert grew(names[0], "echo", "status", "failed") == 1
    assert grew(names[0], "", "status", "succeeded") == 1
    assert grew(names[0], "", "status", "failed") == 0
    for agent, mine in (("echo", done[:3]), ("", done[3:])):
        assert grew(names[1], agent, "kind", "prompt") == sum(r.usage.prompt_tokens for r in mine)
        assert grew(names[1], agent, "kind", "completion") == sum(
            r.usage.completion_tokens for r in mine
        )
        assert grew(names[1], agent, "kind", "cached") == 800 * (len(mine) - (agent == "echo"))
        cost = metric("agentfleet_agent_cost_usd_total", agent=agent) - cost_before[agent]
        assert cost == pytest.approx(sum(r.usage.cost for r in mine))
        assert cost > 0


def test_a_run_ends_before_a_call_that_would_pass_its_token_budget(
    bfleet: Fleet, tenant: Callable[[str], Client]
) -> None:
    client = tenant("runs-own")
    # The first call fits (about 330 of 700), the second does not: the run has used 1050.
    run = client.wait(
        client.create_run(
            'call async_double {"n": 2} [[usage:1000,50]] [[tag:own-budget]]',
            tools=["async_double"],
            max_total_tokens=700,
        ).id,
        timeout=60,
    )
    assert run.status == "failed"
    assert run.error is not None
    assert run.error.code == "budget_exceeded"
    assert "used 1050 of its 700 tokens" in run.error.message
    assert run.usage.llm_calls == 1
    assert bfleet.tagged("own-budget") == 1  # the second call was never made
    # A budget below the first call's estimate makes no call at all.
    small = client.wait(
        client.create_run("[[tag:own-budget-0]] hello", tools=[], max_total_tokens=10).id,
        timeout=60,
    )
    assert small.error is not None
    assert small.error.code == "budget_exceeded"
    assert bfleet.tagged("own-budget-0") == 0


def test_a_run_ends_before_a_call_that_would_pass_its_cost_budget(
    bfleet: Fleet, tenant: Callable[[str], Client]
) -> None:
    client = tenant("runs-own")
    # Each call costs (1000 * 2 + 50 * 8) / 1e6 = $0.0024; the budget takes one.
    run = client.wait(
        client.create_run(
            'call async_double {"n": 2} [[usage:1000,50]]', tools=["async_double"], max_cost=0.004
        ).id,
        timeout=60,
    )
    assert run.error is not None
    assert run.error.code == "budget_exceeded", run
    assert "max_cost" in run.error.message
    assert run.usage.cost == pytest.approx(0.0024)


def test_concurrent_runs_hold_a_tenant_budget_fleet_wide(
    bfleet: Fleet, tenant: Callable[[str], Client]
) -> None:
    client = tenant("thrifty")
    prompt = "[[usage:100,100]] [[latency:0.3]] run {}"

    def post(index: int) -> str:
        # No tools: the estimate is the prompt and the completion estimate (about 310).
        return client.create_run(prompt.format(index), tools=[]).id

    with ThreadPoolExecutor(50) as pool:
        ids = list(pool.map(post, range(50)))
    runs = [client.wait(run_id, timeout=90) for run_id in ids]
    succeeded = [r for r in runs if r.status == "succeeded"]
    refused = [r for r in runs if r.error is not None and r.error.code == "budget_exceeded"]
    assert len(succeeded) + len(refused) == 50
    assert succeeded
    assert refused
    usage = client.usage()
    # Each call reserved more than it used: the tenant never passes its budget, and what it
    # used is exactly its calls' usage.
    assert usage.tokens == 200 * len(succeeded)
    assert usage.tokens <= 3000
    assert (usage.held_tokens, usage.held_cost) == (0, 0)
    assert usage.budget is not None
    assert usage.budget.tokens_per_day == 3000
    message = refused[0].error.message if refused[0].error else ""
    assert "tenant 'thrifty'" in message
    assert "tokens_per_day" in message


def test_calls_that_use_more_than_reserved_overshoot_by_at_most_the_calls_in_flight(
    bfleet: Fleet, tenant: Callable[[str], Client]
) -> None:
    client = tenant("overrun")
    prompt = "[[usage:350,150]] [[latency:0.3]] run {}"
    # What each call reserves (about 310) and uses (500): it overruns by the difference.
    est = spend.estimate(
        bfleet.settings,
        [Target("default", "sim-1")],
        [{"role": "user", "content": prompt.format(10)}],
        [],
        None,
    ).tokens
    assert est < 500

    def post(index: int) -> str | None:
        # On a slow machine the first runs can end, and spend the budget, while later ones are
        # still being posted: from then on the API refuses new runs (429), as it should.
        try:
            return client.create_run(prompt.format(index), tools=[]).id
        except TooManyRequests:
            return None

    with ThreadPoolExecutor(50) as pool:
        ids = [run_id for run_id in pool.map(post, range(50)) if run_id is not None]
    assert len(ids) > 3000 // 500  # enough accepted to pass the budget
    runs = [client.wait(run_id, timeout=90) for run_id in ids]
    succeeded = sum(r.status == "succeeded" for r in runs)
    usage = client.usage()
    assert usage.tokens == 500 * succeeded
    # Reservations never hold more than the budget at once, so at most 3000 // est calls are
    # in flight when it is passed; each overruns its hold by 500 - est.
    in_flight = 3000 // est
    assert 3000 < usage.tokens <= 3000 + in_flight * (500 - est)


def test_a_tenant_over_its_budget_gets_429_and_nothing_is_enqueued(
    bfleet: Fleet, tenant: Callable[[str], Client]
) -> None:
    client = tenant("tiny")
    # Its estimate (about 310) fits the 500; it uses 610.
    first = client.run("[[usage:600,10]] spend it", tools=[], timeout=60)
    assert first.status == "succeeded"
    before = bfleet.run_keys()
    with pytest.raises(TooManyRequests) as refused:
        client.create_run("one more")
    assert "tenant 'tiny'" in refused.value.message
    assert "tokens_per_day" in refused.value.message
    assert refused.value.retry_after is not None
    assert 0 < refused.value.retry_after <= 86_401
    reply = bfleet.http.post(
        "/v1/batches",
        json={"items": [{"input": "x"}]},
        headers={"Authorization": f"Bearer {bfleet.stack.make_api_key('tiny')}"},
    )
    assert reply.status_code == 429, reply.text
    assert bfleet.run_keys() == before
    # Another tenant is not affected.
    assert tenant("other").run("hello", timeout=60).status == "succeeded"


def test_a_cost_budget_refuses_like_a_token_budget(
    bfleet: Fleet, tenant: Callable[[str], Client]
) -> None:
    client = tenant("frugal")
    # Its estimate ($0.0024) fits the $0.003; it costs $0.0036.
    assert client.run("[[usage:1000,200]] a", tools=[], timeout=60).status == "succeeded"
    with pytest.raises(TooManyRequests) as refused:
        client.create_run("b")
    assert "cost_per_day" in refused.value.message


def test_a_run_may_wait_for_its_tenant_budget_without_holding_a_worker(
    bfleet: Fleet, tenant: Callable[[str], Client], wait: Callable[..., None]
) -> None:
    client = tenant("patient")
    assert client.run("[[usage:250,10]] first", tools=[], timeout=60).status == "succeeded"
    # 260 of 500 used: the API still takes runs, but the next call's estimate (about 310)
    # does not fit.
    run_id = client.create_run("second", tools=[], budget_policy="wait").id

    def waiting() -> bool:
        run = client.get_run(run_id)
        return run.waiting is not None and run.waiting.reason == "budget"

    wait(waiting, 30, "the run to wait for its budget")
    run = client.get_run(run_id)
    assert run.status == "running"
    assert run.waiting is not None
    midnight = (datetime.now(UTC) + timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    retry_at = datetime.fromisoformat(run.waiting.retry_at)
    assert midnight <= retry_at <= midnight + timedelta(seconds=60)
    # It holds no message: no queue has it, and the run is due only then.
    assert all(bfleet.redis.llen(q) == 0 for q in ("agents", "tools"))
    due = bfleet.redis.zscore(f"{bfleet.settings.redis.key_prefix}:runs:active", run_id)
    assert due is not None
    assert due >= midnight.timestamp()
    # A run that does not wait fails instead.
    failed = client.wait(client.create_run("third", tools=[]).id, timeout=60)
    assert failed.error is not None
    assert failed.error.code == "budget_exceeded"
    client.cancel(run_id)
    assert client.wait(run_id, timeout=30).status == "cancelled"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_total_tokens", 0),
        ("max_total_tokens", -5),
        ("max_total_tokens", 10**12),
        ("max_cost", 0),
        ("max_cost", "a lot"),
        ("max_cost", 10**9),
        ("budget_policy", "never"),
    ],
)
def test_a_budget_that_cannot_be_is_a_422_naming_it(
    bfleet: Fleet, field: str, value: object
) -> None:
    before = bfleet.run_keys()
    reply = bfleet.http.post("/v1/runs", json={"input": "hi", field: value})
    assert reply.status_code == 422, reply.text
    assert field in reply.text
    assert bfleet.run_keys() == before


def test_the_usage_of_a_day_must_be_a_day(bfleet: Fleet) -> None:
    assert bfleet.http.get("/v1/usage", params={"day": "yesterday"}).status_code == 422
    old = bfleet.http.get("/v1/usage", params={"day": "2020-01-01"}).json()
    assert (old["tokens"], old["models"], old["resets_at"]) == (0, [], None)


@pytest.mark.parametrize(
    "env",
    [
        {"AGENTFLEET_TENANT_BUDGETS": '{"a": {"tokens_per_day": -1}}'},
        {"AGENTFLEET_TENANT_BUDGETS": '{"a": {"cost_per_day": 0}}'},
        {"AGENTFLEET_TENANT_BUDGETS": '{"a": {"tokens": 5}}'},
        {"AGENTFLEET_LLM_PRICES": '{"m": {"input": -1, "output": 1}}'},
        {"AGENTFLEET_LLM_PRICES": '{"m": {"input": 1}}'},
    ],
)
def test_budget_and_price_settings_are_checked(env: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Settings.from_environ(env)


def test_a_tenant_without_a_budget_of_its_own_takes_the_default() -> None:
    settings = Settings.from_environ(
        {"AGENTFLEET_TENANT_BUDGETS": '{"*": {"tokens_per_day": 10}, "big": {}}'}
    )
    default = settings.tenants.tenant_budget("anyone")
    assert default is not None
    assert default.tokens_per_day == 10
    assert settings.tenants.tenant_budget("big") is None  # its own, and it sets no limit


def test_a_fleet_without_budgets_reserves_nothing(
    bfleet: Fleet, tenant: Callable[[str], Client]
) -> None:
    client = tenant("free")
    run = client.run("[[usage:10,10]] hi", timeout=60)
    assert run.status == "succeeded"
    p = bfleet.settings.redis.key_prefix
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert not bfleet.redis.exists(f"{p}:tenant:free:spend:{day}:held")
    assert bfleet.redis.hget(f"{p}:tenant:free:spend:{day}", "tokens") == "20"
