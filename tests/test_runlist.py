"""Run list and search: a tenant's runs newest first, filtered by the indexes the transition
scripts keep, a page at a time with a cursor."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from agentfleet.client import Client, InvalidRequest
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
    p = fleet.settings.key_prefix
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
