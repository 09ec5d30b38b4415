"""The synchronous client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar, Unpack, overload

import httpx
from pydantic import BaseModel

from agentfleet.client import _core, _models
from agentfleet.client._core import BatchOptions, Decision, RunFilters, RunOptions
from agentfleet.client._errors import Unreachable
from agentfleet.client._models import M

T = TypeVar("T")


class Client(_core.BaseClient[httpx.Client]):
    """The agentfleet API: ``Client().create_run("...")``, then ``.wait(run_id)``.

    ``Client(base_url=None, *, api_key=None, timeout=DEFAULT_TIMEOUT,
    events_timeout=EVENTS_TIMEOUT)``: ``base_url`` defaults to ``AGENTFLEET_API_URL``, else
    ``http://127.0.0.1:8000``; ``api_key`` to ``AGENTFLEET_API_KEY``. ``timeout`` bounds each
    request, ``events_timeout`` an event stream's connect and its silence between two events.
    Use it as a context manager, or :meth:`close` it.

    An error answer raises the :class:`~agentfleet.client.ApiError` of its status (e.g.
    ``NotFound``); no answer raises ``Unreachable``; a ``wait*`` out of time, ``WaitTimeout``.
    """

    def _connect(
        self, url: str, headers: dict[str, str], timeout: float | httpx.Timeout
    ) -> httpx.Client:
        return httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _core.Call[T]) -> T:
        with _core.transport_errors():
            return call.answer(self._http.request(**call.request()))

    def _wait(self, wait: _core.Wait[T]) -> T:
        while not wait.finished(result := self._send(wait.call)):
            time.sleep(wait.interval)
        return result

    def create_run(
        self,
        input: str | dict[str, Any],
        *,
        output_type: type[BaseModel] | None = None,
        **options: Unpack[RunOptions],
    ) -> _models.Accepted:
        """Enqueue an agent run; answers at once with its ID (see ``RunOptions``).
        ``output_type``: a pydantic model the answer must match (sent as ``output_schema``)."""
        return self._send(_core.create_run(input, options, output_type))

    @overload
    def run(
        self,
        input: str | dict[str, Any],
        *,
        output_type: None = None,
        timeout: float = 300.0,
        **options: Unpack[RunOptions],
    ) -> _models.Run: ...
    @overload
    def run(
        self,
        input: str | dict[str, Any],
        *,
        output_type: type[M],
        timeout: float = 300.0,
        **options: Unpack[RunOptions],
    ) -> M: ...
    def run(
        self,
        input: str | dict[str, Any],
        *,
        output_type: type[M] | None = None,
        timeout: float = 300.0,
        **options: Unpack[RunOptions],
    ) -> _models.Run | M:
        """Run to the end: the succeeded run, or with ``output_type`` its result as an
        instance of that model. ``RunError`` if the run failed or was cancelled,
        ``WaitTimeout`` after ``timeout`` seconds (the run goes on)."""
        accepted = self.create_run(input, output_type=output_type, **options)
        return _core.outcome(self.wait(accepted.id, timeout), output_type)

    def get_run(self, run_id: str) -> _models.Run:
        """The run's status, progress, usage and result."""
        return self._send(_core.get_run(run_id))

    def cancel(self, run_id: str, *, idempotency_key: str | None = None) -> _models.Run:
        """Cancel a run; a run already final raises ``Conflict``."""
        return self._send(_core.cancel_run(run_id, idempotency_key))

    def wait(
        self,
        run_id: str,
        timeout: float = 120.0,
        interval: float = 0.2,
        *,
        until_waiting: bool = False,
    ) -> _models.Run:
        """Poll until the run is succeeded, failed or cancelled (with ``until_waiting``, also
        until it waits for a person); ``WaitTimeout`` after ``timeout`` seconds."""
        return self._wait(_core.wait_run(run_id, timeout, interval, until_waiting))

    def decide(self, run_id: str, decisions: list[Decision]) -> _models.Run:
        """Approve or deny calls the run waits for (``Decision``: ``call_id``, ``approve``,
        optionally edited ``arguments`` and a ``message`` for the model). ``Conflict`` if
        the run is not waiting, or a call is not pending or was decided already."""
        return self._send(_core.decide_run(run_id, decisions))

    def approve(
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
        return self.decide(run_id, [decision])

    def deny(self, run_id: str, call_id: str, *, message: str | None = None) -> _models.Run:
        """Deny one pending call: the model gets "denied by the reviewer" and ``message``."""
        decision = Decision(call_id=call_id, approve=False)
        if message is not None:
            decision["message"] = message
        return self.decide(run_id, [decision])

    def answer(self, run_id: str, answer: str, *, call_id: str | None = None) -> _models.Run:
        """Answer the question the run asked (``call_id``: which one, if it asked several)."""
        return self._send(_core.answer_run(run_id, answer, call_id))

    def pending(self, limit: int = 100) -> list[_models.Run]:
        """The tenant's runs waiting for a person, newest first (at most ``limit``)."""
        page = self.list_runs(limit=min(limit, 100), status="waiting")
        return page.runs

    def events(
        self, run_id: str, after: str | None = None, reconnect: bool = True
    ) -> Iterator[_models.Event]:
        """The run's events until its final one, after the event ID ``after`` (None: from
        the first). A broken connection, or a stream that ends early, is opened again after
        the last event seen; with ``reconnect`` false, the events of one connection."""
        stream = self._events(run_id, after, reconnect)
        while stream.opens():
            try:
                with _core.transport_errors(), self._http.stream(**stream.connect()) as response:
                    if response.is_error:
                        raise _core.error_of(response, response.read())
                    for line in response.iter_lines():
                        if event := stream.feed(line):
                            yield event
            except Unreachable as broken:
                time.sleep(stream.broken(broken))

    def create_tool_call(
        self, name: str, arguments: dict[str, Any], call_id: str | None = None
    ) -> _models.Accepted:
        """Enqueue one tool call; a ``call_id`` used before answers with that call."""
        return self._send(_core.create_tool_call(name, arguments, call_id))

    def get_tool_call(self, call_id: str) -> _models.ToolCall:
        return self._send(_core.get_tool_call(call_id))

    def wait_tool_call(
        self, call_id: str, timeout: float = 60.0, interval: float = 0.2
    ) -> _models.ToolCall:
        """Poll until the tool call is final (succeeded, failed or cancelled); ``WaitTimeout``
        after ``timeout``."""
        return self._wait(_core.wait_tool_call(call_id, timeout, interval))

    def create_batch(
        self, items: list[dict[str, Any]], **options: Unpack[BatchOptions]
    ) -> _models.Accepted:
        """Enqueue runs (``{"input": ...}``), prompts (``{"type": "prompt", ...}``) and tool
        calls (``{"type": "tool_call", "name": ..., "arguments": ...}``) as one batch."""
        return self._send(_core.create_batch(items, options))

    def create_batch_from_jsonl(
        self, path: str | Path, **options: Unpack[BatchOptions]
    ) -> _models.Accepted:
        """A batch of the items of a JSONL file: one a line, blank lines skipped."""
        return self.create_batch(_core.read_jsonl(path), **options)

    def get_batch(self, batch_id: str, offset: int = 0, limit: int = 100) -> _models.Batch:
        """The batch, with ``limit`` of its items from ``offset``."""
        return self._send(_core.get_batch(batch_id, offset, limit))

    def wait_batch(
        self, batch_id: str, timeout: float = 600.0, interval: float = 0.5
    ) -> _models.Batch:
        """Poll until every item is final; ``WaitTimeout`` after ``timeout``."""
        return self._wait(_core.wait_batch(batch_id, timeout, interval))

    def cancel_batch(self, batch_id: str, *, idempotency_key: str | None = None) -> _models.Batch:
        """Cancel the batch's items not yet final; a batch already final raises ``Conflict``."""
        return self._send(_core.cancel_batch(batch_id, idempotency_key))

    def tools(self) -> list[_models.ToolInfo]:
        """The tools of the API and the live workers, and where they disagree."""
        return self._send(_core.TOOLS)

    def get_thread(self, thread_id: str, offset: int = 0, limit: int = 100) -> _models.Thread:
        """A page of a thread's history, its running and waiting runs, its latest runs."""
        return self._send(_core.get_thread(thread_id, offset, limit))

    def delete_thread(self, thread_id: str) -> None:
        """Delete a thread's history; ``Conflict`` while it has unfinished runs."""
        self._send(_core.delete_thread(thread_id))

    def agents(self) -> list[_models.AgentInfo]:
        """The declared agents of the API and the live workers, with their schemas."""
        return self._send(_core.AGENTS)

    def run_steps(self, run_id: str) -> _models.RunSteps:
        """The run step by step: inputs, answers, tool calls, usage and timing."""
        return self._send(_core.run_steps(run_id))

    def list_runs(
        self, *, limit: int = 20, cursor: str | None = None, **filters: Unpack[RunFilters]
    ) -> _models.RunPage:
        """A page of the tenant's runs, newest first (``RunFilters``); pass the page's
        ``next_cursor`` as ``cursor`` for the next one."""
        return self._send(_core.list_runs(filters, limit, cursor))

    def usage(self, day: str | None = None) -> _models.UsageReport:
        """The tenant's LLM spend on ``day`` (UTC ``YYYY-MM-DD``; default today), per model,
        and its daily budget."""
        return self._send(_core.usage(day))

    def providers(self) -> list[_models.ProviderState]:
        """Breaker and rate-limit state of each LLM provider, as the fleet sees it."""
        return self._send(_core.PROVIDERS)

    def health(self) -> _models.Health:
        """The API's health; ``ok`` false (not an error) when it cannot reach Redis."""
        return self._send(_core.HEALTH)
