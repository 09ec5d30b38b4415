"""Completion callbacks: signed, retried until a receiver that was down comes back."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentfleet.tasks.callbacks import EVENT_HEADER, SIGNATURE_HEADER, verify
from ops.stack import free_port
from tests.conftest import FLEET_ENV, Fleet

SECRET = FLEET_ENV["AGENTFLEET_CALLBACK_SECRET"]


class Receiver:
    """A real HTTP server that records what is POSTed to it and checks the signature."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[dict[str, object]] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(
                    {
                        "body": json.loads(body),
                        "valid": verify(SECRET, body, self.headers[SIGNATURE_HEADER]),
                        "forged": verify("not-the-secret", body, self.headers[SIGNATURE_HEADER]),
                        "event": self.headers[EVENT_HEADER],
                    }
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    handle = Receiver(free_port())
    yield handle
    handle.stop()


def test_callback_reaches_a_receiver_that_was_down(
    fleet: Fleet, receiver: Receiver, wait: Callable[..., None]
) -> None:
    run_id = fleet.client.create_run("hello callback", callback_url=receiver.url).id
    key = f"{fleet.settings.redis.key_prefix}:run:{run_id}"
    # Nobody listens yet: the first attempt fails and is recorded.
    wait(lambda: fleet.redis.hget(key, "callback_attempts") is not None, 30, "a first attempt")
    assert fleet.redis.hget(key, "callback_status") != "delivered"
    receiver.start()

    wait(lambda: receiver.received, 30, "the callback")
    (got,) = receiver.received
    assert got["valid"] is True
    assert got["forged"] is False
    assert got["event"] == "run.succeeded"
    assert got["body"] == fleet.http.get(f"/v1/runs/{run_id}").json()
    wait(lambda: fleet.redis.hget(key, "callback_status") == "delivered", 10, "the status")
    assert int(fleet.redis.hget(key, "callback_attempts") or 0) >= 2


def test_a_run_is_called_back_when_it_waits_for_a_person_and_when_it_ends(
    fleet: Fleet, receiver: Receiver, wait: Callable[..., None]
) -> None:
    receiver.start()
    prompt = 'call ask_human {"question": "Proceed?"}'
    run_id = fleet.client.create_run(prompt, tools=["ask_human"], callback_url=receiver.url).id
    wait(lambda: receiver.received, 30, "the callback of the wait")
    got = receiver.received[0]
    assert got["valid"] is True
    assert got["event"] == "run.waiting"
    body = got["body"]
    assert isinstance(body, dict)
    assert body["waiting"]["reason"] == "input"
    fleet.client.answer(run_id, "yes")
    wait(lambda: len(receiver.received) >= 2, 30, "the final callback")
    assert [r["event"] for r in receiver.received] == ["run.waiting", "run.succeeded"]


def test_batch_callback(fleet: Fleet, receiver: Receiver, wait: Callable[..., None]) -> None:
    receiver.start()
    batch_id = fleet.client.create_batch(
        [{"input": f"b{i}"} for i in range(10)], callback_url=receiver.url
    ).id
    wait(lambda: receiver.received, 60, "the batch callback")
    got = receiver.received[0]
    assert got["valid"] is True
    assert got["event"] == "batch.completed"
    body = got["body"]
    assert isinstance(body, dict)
    assert body["id"] == batch_id
    assert body["result"]["counts"] == {"succeeded": 10}


def test_signature_checks() -> None:
    from agentfleet.tasks.callbacks import sign

    body = b'{"a":1}'
    header = sign("s3cret", body)
    assert verify("s3cret", body, header)
    assert not verify("s3cret", b'{"a":2}', header)
    assert not verify("other", body, header)
    assert not verify("s3cret", body, sign("s3cret", body, timestamp=1))  # stale
    assert not verify("s3cret", body, "garbage")
