"""The asynchronous client: :class:`Client`'s methods, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar, Unpack, overload

import httpx
from pydantic import BaseModel

from agentfleet.client import _core, _models
from agentfleet.client._core import BatchOptions, Decision, RunFilters, RunOptions
from agentfleet.client._errors import Unreachable
from agentfleet.client._models import M

T = TypeVar("T")


class AsyncClient(_core.BaseClient[httpx.AsyncClient]):
    """The agentfleet API from asyncio: ``await client.create_run("...")``.

    The same arguments, methods and errors as :class:`~agentfleet.client.Client`, each
    method a coroutine and :meth:`events` an async iterator. ``async with`` it, or
    :meth:`aclose` it.
    """

    def _connect(
        self, url: str, headers: dict[str, str], timeout: float | httpx.Timeout
    ) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _core.Call[T]) -> T:
        with _core.transport_errors():
            return call.answer(await self._http.request(**call.request()))

    async def _wait(self, wait: _core.Wait[T]) -> T:
        while not wait.finished(result := await self._send(wait.call)):
            await asyncio.sleep(wait.interval)
        return result

    async def create_run(
        self,
        input: str | dict[str, Any],
        *,
        output_type: type[BaseModel] | None = None,
        **options: Unpack[RunOptions],
    ) -> _models.Accepted:
        return await self._send(_core.create_run(input, options, output_type))

    @overload
    async def run(
        self,
        input: str | dict[str, Any],
        *,
        output_type: None = None,
        timeout: float = 300.0,
        **options: Unpack[RunOptions],
    ) -> _models.Run: ...
    @overload
    async def run(
        self,
        input: str | dict[str, Any],
        *,
        output_type: type[M],
        timeout: float = 300.0,
        **options: Unpack[RunOptions],
    ) -> M: ...
    async def run(
        self,
        input: str | dict[str, Any],
        *,
        output_type: type[M] | None = None,
        timeout: float = 300.0,
        **options: Unpack[RunOptions],
    ) -> _models.Run | M:
        accepted = await self.create_run(input, output_type=output_type, **options)
        return _core.outcome(await self.wait(accepted.id, timeout), output_type)

    async def get_run(self, run_id: str) -> _models.Run:
        return await self._send(_core.get_run(run_id))

    async def cancel(self, run_id: str, *, idempotency_key: str | None = None) -> _models.Run:
        return await self._send(_core.cancel_run(run_id, idempotency_key))

    async def wait(
        self,
        run_id: str,
        timeout: float = 120.0,
        interval: float = 0.2,
        *,
        until_waiting: bool = False,
    ) -> _models.Run:
        """Poll until the run is succeeded, failed or cancelled (with ``until_waiting``, also
        until it waits for a person); ``WaitTimeout`` after ``timeout`` seconds."""
        return await self._wait(_core.wait_run(run_id, timeout, interval, until_waiting))

    async def decide(self, run_id: str, decisions: list[Decision]) -> _models.Run:
        """Approve or deny calls the run waits for (``Decision``: ``call_id``, ``approve``,
        optionally edited ``arguments`` and a ``message`` for the model). ``Conflict`` if
        the run is not waiting, or a call is not pending or was decided already."""
        return await self._send(_core.decide_run(run_id, decisions))

    async def approve(
        self,
        run_id: str,
        call_id: str,
        *,
        arguments: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> _models.Run:
        """Approve one pending call, to run as asked or with ``arguments`` instead."""
        decision = Decision(call_id=call_id, approve=True)
        if arguments is not None:
            decision["arguments"] = arguments
        if message is not None:
            decision["message"] = message
        return await self.decide(run_id, [decision])

    async def deny(self, run_id: str, call_id: str, *, message: str | None = None) -> _models.Run:
        """Deny one pending call: the model gets "denied by the reviewer" and ``message``."""
        decision = Decision(call_id=call_id, approve=False)
        if message is not None:
            decision["message"] = message
        return await self.decide(run_id, [decision])

    async def answer(self, run_id: str, answer: str, *, call_id: str | None = None) -> _models.Run:
        """Answer the question the run asked (``call_id``: which one, if it asked several)."""
        return await self._send(_core.answer_run(run_id, answer, call_id))

    async def pending(self, limit: int = 100) -> list[_models.Run]:
        """The tenant's runs waiting for a person, newest first (at most ``limit``)."""
        page = await self.list_runs(limit=min(limit, 100), status="waiting")
        return page.runs

    async def events(
        self, run_id: str, after: str | None = None, reconnect: bool = True
    ) -> AsyncIterator[_models.Event]:
        stream = self._events(run_id, after, reconnect)
        while stream.opens():
            try:
                with _core.transport_errors():
                    async with self._http.stream(**stream.connect()) as response:
                        if response.is_error:
                            raise _core.error_of(response, await response.aread())
                        async for line in response.aiter_lines():
                            if event := stream.feed(line):
                                yield event
            except Unreachable as broken:
                await asyncio.sleep(stream.broken(broken))

    async def create_tool_call(
        self, name: str, arguments: dict[str, Any], call_id: str | None = None
    ) -> _models.Accepted:
        return await self._send(_core.create_tool_call(name, arguments, call_id))

    async def get_tool_call(self, call_id: str) -> _models.ToolCall:
        return await self._send(_core.get_tool_call(call_id))

    async def wait_tool_call(
        self, call_id: str, timeout: float = 60.0, interval: float = 0.2
    ) -> _models.ToolCall:
        return await self._wait(_core.wait_tool_call(call_id, timeout, interval))

    async def create_batch(
        self, items: list[dict[str, Any]], **options: Unpack[BatchOptions]
    ) -> _models.Accepted:
        return await self._send(_core.create_batch(items, options))

    async def create_batch_from_jsonl(
        self, path: str | Path, **options: Unpack[BatchOptions]
    ) -> _models.Accepted:
        return await self.create_batch(_core.read_jsonl(path), **options)

    async def get_batch(self, batch_id: str, offset: int = 0, limit: int = 100) -> _models.Batch:
        return await self._send(_core.get_batch(batch_id, offset, limit))

    async def wait_batch(
        self, batch_id: str, timeout: float = 600.0, interval: float = 0.5
    ) -> _models.Batch:
        return await self._wait(_core.wait_batch(batch_id, timeout, interval))

    async def cancel_batch(
        self, batch_id: str, *, idempotency_key: str | None = None
    ) -> _models.Batch:
        return await self._send(_core.cancel_batch(batch_id, idempotency_key))

    async def tools(self) -> list[_models.ToolInfo]:
        return await self._send(_core.TOOLS)

    async def get_thread(self, thread_id: str, offset: int = 0, limit: int = 100) -> _models.Thread:
        return await self._send(_core.get_thread(thread_id, offset, limit))

    async def delete_thread(self, thread_id: str) -> None:
        await self._send(_core.delete_thread(thread_id))

    async def agents(self) -> list[_models.AgentInfo]:
        return await self._send(_core.AGENTS)

    async def run_steps(self, run_id: str) -> _models.RunSteps:
        return await self._send(_core.run_steps(run_id))

    async def list_runs(
        self, *, limit: int = 20, cursor: str | None = None, **filters: Unpack[RunFilters]
    ) -> _models.RunPage:
        return await self._send(_core.list_runs(filters, limit, cursor))

    async def usage(self, day: str | None = None) -> _models.UsageReport:
        return await self._send(_core.usage(day))

    async def providers(self) -> list[_models.ProviderState]:
        return await self._send(_core.PROVIDERS)

    async def health(self) -> _models.Health:
        return await self._send(_core.HEALTH)
