"""The request body limit, enforced for every route before any of them sees the body.

A body whose ``Content-Length`` is over :data:`MAX_BODY_BYTES` is refused before a byte of it
is read. A body without one (``Transfer-Encoding: chunked``) is read here before the app is
called, never more than one chunk past the limit: over it is a 413, within it the app gets
the messages read. So authentication, idempotency and validation never wait for, or hold, an
oversized body. A 413 closes the connection, so the client stops sending the rest.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Largest request body accepted, in bytes.
MAX_BODY_BYTES: Final = 1_000_000


class BodyLimit:
    """ASGI middleware: 413 for request bodies over :data:`MAX_BODY_BYTES`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            await _too_large(scope, receive, send)
            return
        if length is not None or "transfer-encoding" not in headers:
            # No body, or one the server's parser stops at its declared length.
            await self.app(scope, receive, send)
            return
        messages = await _read_within_limit(receive)
        if messages is None:
            await _too_large(scope, receive, send)
            return
        await self.app(scope, _replay(messages, receive), send)


async def _read_within_limit(receive: Receive) -> list[Message] | None:
    """The request's messages up to the end of its body (or a disconnect); None as soon as
    the body passes the limit."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        size += len(message.get("body", b""))
        if size > MAX_BODY_BYTES:
            return None
        if not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that hands out ``messages`` first, then what the server sends."""
    pending = deque(messages)

    async def replayed() -> Message:
        return pending.popleft() if pending else await receive()

    return replayed


async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(
        {"detail": f"request body is larger than {MAX_BODY_BYTES} bytes"},
        status_code=413,
        # Without it the server would go on reading (and discarding) the rest of the body.
        headers={"Connection": "close"},
    )
    await response(scope, receive, send)
