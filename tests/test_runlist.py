"""Run list and search: a tenant's runs newest first, filtered by the indexes the transition
scripts keep, a page at a time with a cursor."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from agentfleet.client import Client, InvalidRequest, Run
from agentfleet.tasks import keys
from tests.conftest import Fleet


@pytest.fixture
def tenant(fleet: Fleet) -> Iterator[tuple[str, Client]]:
    """A tenant of its own, so the lists hold only what the test made."""
    name = f"lister-{uuid.uuid4().hex[:8]}"
    with fleet.client_of(name) as client:
        yield name, client


def _all(client: Client, limit: int, **filters: object) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page = client.list_runs(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        pages.append([r.id for r in page.runs])
        cursor = page.next_cursor
        if cursor is None:
            return pages


def test_runs_are_listed_newest_first_a_page_at_a_time(tenant: tuple[str, Client]) -> None:
    _, client = tenant
    ids = [client.run(f"run {i}", tools=[], timeout=60).id for i in range(7)]
    first = client.list_runs(limit=3)
    assert [r.id for r in first.runs] == ids[::-1][:3]
    assert first.next_cursor is not None
    # A run created after the first page does not shift the next ones.
    newer = client.run("newer", tools=[], timeout=60).id
    rest = _all_after(client, first.next_cursor, 3)
    assert rest == ids[::-1][3:]
    assert client.list_runs(limit=1).runs[0].id == newer
    assert client.list_runs(limit=100).runs[0].status == "succeeded"


def _all_after(client: Client, cursor: str | None, limit: int) -> list[str]:
    found: list[str] = []
    while cursor is not None:
        page = client.list_runs(limit=limit, cursor=cursor)
        found += [r.id for r in page.runs]
        cursor = page.next_cursor
    return found


def test_filters_pick_runs_by_status_agent_thread_error_metadata_and_time(
    fleet: Fleet, tenant: tuple[str, Client], wait: Callable[..., None]
) -> None:
    _, client = tenant
    started = datetime.now(UTC)
    ok = client.run("fine", tools=[], metadata={"team": "a", "ticket": "1"}, timeout=60)
    failed = client.wait(
        client.create_run("[[error:400]] broken", tools=[], metadata={"team": "a"}).id,
        timeout=60,
    )
    assert failed.status == "failed"
    assert failed.error is not None
    by_agent = client.run("hello", agent="echo", timeout=60)
    thread = f"t-{uuid.uuid4().hex[:8]}"
    on_thread = client.run("in a thread", tools=[], thread_id=thread, timeout=60)
    slow = client.create_run("[[latency:5]] slow", tools=[]).id
    wait(lambda: client.get_run(slow).status == "running", 30, "the slow run to start")

    def listed(**filters: object) -> list[str]:
        return [i for page in _all(client, 2, **filters) for i in page]

    assert listed(status="failed") == [failed.id]
    assert listed(status="running") == [slow]
    assert set(listed(status="succeeded")) == {ok.id, by_agent.id, on_thread.id}
    assert listed(agent="echo") == [by_agent.id]
    assert listed(thread_id=thread) == [on_thread.id]
    assert listed(error_code=failed.error.code) == [failed.id]
    assert listed(metadata={"team": "a"}) == [failed.id, ok.id]
    assert listed(metadata={"team": "a", "ticket": "1"}) == [ok.id]
    assert listed(metadata={"team": "b"}) == []
    assert listed(status="failed", metadata={"team": "a"}) == [failed.id]
    assert len(listed(created_after=started)) == 5
    assert listed(created_after=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert listed(created_before=started) == []
    client.cancel(slow)


def test_a_tenant_lists_only_its_own_runs(fleet: Fleet, tenant: tuple[str, Client]) -> None:
    _, client = tenant
    mine = client.run("mine", tools=[], timeout=60).id
    with fleet.client_of(f"other-{uuid.uuid4().hex[:8]}") as other:
        assert other.list_runs().runs == []
    assert [r.id for r in client.list_runs().runs] == [mine]


def test_a_run_whose_record_expired_leaves_the_list(
    fleet: Fleet, tenant: tuple[str, Client]
) -> None:
    name, client = tenant
    gone, kept = (client.run(f"r{i}", tools=[], timeout=60).id for i in range(2))
    p = fleet.settings.redis.key_prefix
    fleet.redis.delete(keys.run(p, gone))
    assert [r.id for r in client.list_runs().runs] == [kept]
    assert fleet.redis.zscore(keys.tenant_runs(p, name), gone) is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "lost"}, "status"),
        ({"metadata": "no-pair"}, "metadata"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"created_after": "yesterday"}, "created_after"),
    ],
)
def test_a_list_query_that_cannot_be_is_a_422(
    fleet: Fleet, params: dict[str, object], field: str
) -> None:
    reply = fleet.http.get("/v1/runs", params=params)
    assert reply.status_code == 422, reply.text
    assert field in reply.text


def test_the_client_raises_on_a_bad_cursor(tenant: tuple[str, Client]) -> None:
    _, client = tenant
    with pytest.raises(InvalidRequest):
        client.list_runs(cursor="garbage")


def test_the_cli_lists_failed_runs_of_the_last_hour(fleet: Fleet) -> None:
    failed = fleet.client.wait(
        fleet.client.create_run(f"[[error:400]] cli {time.time()}", tools=[]).id, timeout=60
    )
    done = fleet.cli("runs", "--status", "failed", "--since", "1h", "--limit", "500")
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith(failed.id))
    assert "failed" in line
    assert failed.error is not None
    assert failed.error.code in line
    bad = fleet.cli("runs", "--since", "soon")
    assert bad.returncode != 0
    assert "duration" in bad.stderr


#: The thousand runs of the mixed-status test: a bulk batch (succeeded and failed, some of an
#: agent) and runs on threads (the head of each running, the rest queued behind it or cancelled).
THREADS, QUEUED_PER_THREAD, CANCELLED_PER_THREAD = 10, 5, 15
OK_RUNS, AGENT_RUNS, FAILED_RUNS = 580, 60, 150
BULK = OK_RUNS + AGENT_RUNS + FAILED_RUNS
HELD = THREADS * (1 + QUEUED_PER_THREAD + CANCELLED_PER_THREAD)


def _bulk_items() -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    for i in range(OK_RUNS):
        items.append(
            {"input": f"ok {i}", "tools": [], "metadata": {"kind": "ok", "part": str(i % 5)}}
        )
    for i in range(AGENT_RUNS):
        items.append({"input": f"agent {i}", "agent": "echo", "metadata": {"kind": "agent"}})
    for i in range(FAILED_RUNS):
        items.append({"input": f"[[error:400]] bad {i}", "tools": [], "metadata": {"kind": "bad"}})
    return items


def _batch_ids(client: Client, batch_id: str, total: int) -> list[str]:
    return [
        item.id
        for offset in range(0, total, 100)
        for item in client.get_batch(batch_id, offset=offset, limit=100).items
    ]


def _held_runs(client: Client) -> tuple[list[str], list[str], list[str]]:
    """On each of THREADS threads, a run whose LLM call hangs (running) and runs queued behind
    it, some of them cancelled: (running, queued, cancelled) IDs. Queued and cancelled runs hold
    no worker."""
    tag = uuid.uuid4().hex[:8]
    with ThreadPoolExecutor(8) as pool:
        # The call outlasts the LLM timeout (20 s) and its one retry: running for 40 s.
        heads = list(
            pool.map(
                lambda t: (
                    client.create_run(
                        f"[[latency:60]] hold {t}", tools=[], thread_id=f"{tag}-{t}"
                    ).id
                ),
                range(THREADS),
            )
        )
        behind = list(
            pool.map(
                lambda n: (
                    client.create_run(f"behind {n}", tools=[], thread_id=f"{tag}-{n % THREADS}").id
                ),
                range(THREADS * (QUEUED_PER_THREAD + CANCELLED_PER_THREAD)),
            )
        )
        cut = THREADS * QUEUED_PER_THREAD
        queued, cancelled = behind[:cut], behind[cut:]
        assert {r.status for r in pool.map(client.cancel, cancelled)} == {"cancelled"}
    return heads, queued, cancelled


def _page_through(client: Client, limit: int, **filters: object) -> list[Run]:
    runs: list[Run] = []
    cursor = None
    while True:
        page = client.list_runs(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        runs += page.runs
        cursor = page.next_cursor
        if cursor is None:
            return runs


def test_a_thousand_runs_of_mixed_status_list_and_page_stably_while_they_finish(
    fleet: Fleet, tenant: tuple[str, Client], wait: Callable[..., None]
) -> None:
    _, client = tenant
    heads, queued, cancelled = _held_runs(client)
    mark = datetime.now(UTC)
    with fleet.client_of(f"other-{uuid.uuid4().hex[:8]}") as other:
        theirs_batch = other.create_batch(
            [{"input": f"theirs {i}", "tools": []} for i in range(30)]
        )
        bulk = client.create_batch(_bulk_items())
        bulk_ids = _batch_ids(client, bulk.id, BULK)
        everything = set(bulk_ids) | set(heads) | set(queued) | set(cancelled)
        assert len(everything) == BULK + HELD == 1000

        # Page through while the bulk batch runs: every run that existed when paging began is
        # listed once, on one page, in order, though its status changes under the pages.
        before = client.get_batch(bulk.id, limit=1).completed
        listed = _page_through(client, 37)
        after = client.get_batch(bulk.id, limit=1).completed
        assert before < after < BULK, "no run finished while the pages were read"
        ids = [r.id for r in listed]
        assert len(ids) == len(set(ids)) == 1000
        assert set(ids) == everything
        created = [r.created_at or "" for r in listed]
        assert created == sorted(created, reverse=True)
        seen_unfinished = {r.id for r in listed if r.status in ("queued", "running")}
        assert seen_unfinished & set(bulk_ids)
        # A filtered walk in the same churn repeats no run either.
        succeeded_so_far = [r.id for r in _page_through(client, 50, status="succeeded")]
        assert len(succeeded_so_far) == len(set(succeeded_so_far))

        finished = other.wait_batch(theirs_batch.id, timeout=60)
        theirs = {i.id for i in other.get_batch(finished.id, limit=100).items}
        wait(lambda: client.get_batch(bulk.id, limit=1).completed == BULK, 60, "the bulk batch")

        def count(**filters: object) -> int:
            found = [r.id for r in _page_through(client, 100, **filters)]
            assert len(found) == len(set(found))
            assert not set(found) & theirs
            return len(found)

        failed = client.get_run(bulk_ids[-1])
        assert failed.error is not None
        assert count() == 1000
        assert count(status="succeeded") == OK_RUNS + AGENT_RUNS
        assert count(status="failed") == FAILED_RUNS
        assert count(status="cancelled") == THREADS * CANCELLED_PER_THREAD
        assert count(status="running") == THREADS
        assert count(status="queued") == THREADS * QUEUED_PER_THREAD
        assert count(error_code=failed.error.code) == FAILED_RUNS
        assert count(agent="echo") == AGENT_RUNS
        assert count(metadata={"kind": "bad"}) == FAILED_RUNS
        assert count(metadata={"kind": "ok", "part": "0"}) == OK_RUNS // 5
        assert count(status="succeeded", metadata={"kind": "agent"}) == AGENT_RUNS
        assert count(created_after=mark) == BULK
        assert count(created_before=mark) == HELD
        # The other tenant sees exactly its own runs.
        assert {r.id for r in _page_through(other, 100)} == theirs
    # Queued first: cancelling a thread's running run would start the next one.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client.cancel, queued))
        list(pool.map(client.cancel, heads))
