"""A claim sent again with its own token (its first reply was lost as Redis went away, and the
caller's outage retry sent the same script again) answers as the first did: it is not taken
for another worker's claim, and counts no second delivery."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfleet.tasks.llm import resolve_chain
from agentfleet.tasks.models import RunRequest
from agentfleet.tasks.store import RunStore, get_store
from ops.stack import Stack


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunStore]:
    stack = Stack(Path(tmp_path_factory.mktemp("resend")))
    stack.start_redis()
    try:
        yield get_store(stack.settings())
    finally:
        stack.stop()


def test_a_tool_claim_sent_again_is_the_same_claim(store: RunStore) -> None:
    call_id, token = f"call-{uuid.uuid4().hex}", uuid.uuid4().hex
    args = [
        store._ctx(None),
        token,
        60_000,
        "calculator",
        "{}",
        store.due(60),
        0,
        call_id,
        3,
        "",
        "",
    ]
    script_keys = [store.tool_key(call_id), f"{store.tool_key(call_id)}:lease", "none"]
    first = store._begin_tool(keys=script_keys, args=args)
    again = store._begin_tool(keys=script_keys, args=args)
    assert first[0] == again[0] == "ok"
    assert store.redis.hget(store.tool_key(call_id), "attempts") == "1"
    other = store._begin_tool(keys=script_keys, args=[*args[:1], uuid.uuid4().hex, *args[2:]])
    assert other[0] == "busy"  # another claim's token is still held off


def test_a_step_claim_sent_again_is_the_same_claim(store: RunStore) -> None:
    run_id = uuid.uuid4().hex
    chain = resolve_chain(store.settings, None)
    store.create_run(run_id, RunRequest(input="hello"), [], chain)
    token = uuid.uuid4().hex
    script_keys = [
        store.run_key(run_id),
        f"{store.run_key(run_id)}:lease",
        f"{store.run_key(run_id)}:messages",
    ]
    args = [store._ctx(run_id), token, 1, 60_000, 3, store.due(60), "w1"]
    first = store._begin_step(keys=script_keys, args=args)
    again = store._begin_step(keys=script_keys, args=args)
    assert first[0] == again[0] == "ok"
    assert store.redis.hget(store.run_key(run_id), "deliveries:1") == "1"
    other = store._begin_step(keys=script_keys, args=[args[0], uuid.uuid4().hex, *args[2:]])
    assert other[0] == "busy"
