"""Checking a request once: the schema, the limits of the settings, the provider chain."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agentfleet.tasks.errors import InvalidRequest, ToolArgumentsError
from agentfleet.tasks.llm import RoutingError, Target, resolve_chain
from agentfleet.tasks.models import (
    BatchRequest,
    PromptItem,
    RunRequest,
    ToolCallItem,
    ToolCallRequest,
)
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.tools import registry

#: ``(field, message)`` for each thing wrong with a request.
Problems = list[tuple[str, str]]

#: Problems a batch's refusal names at most: enough to fix; a 10,000-item report helps nobody.
MAX_BATCH_PROBLEMS = 20


@dataclass(frozen=True)
class AdmittedRun:
    """A run request that passed every check, with the provider chain it resolved to."""

    request: RunRequest
    chain: list[Target]

    def tools(self, every_tool: Sequence[str] | None = None) -> list[str]:
        """The run's tools: those it names, else ``every_tool`` (default: every registered one)."""
        if self.request.tools is None and every_tool is not None:
            return list(every_tool)
        return resolve_tools(self.request)


@dataclass(frozen=True)
class AdmittedBatch:
    """A batch that passed every check: its items in order, runs admitted, tool calls as sent."""

    request: BatchRequest
    items: list[AdmittedRun | ToolCallItem]


def resolve_tools(request: RunRequest) -> list[str]:
    """The tool names a run may use: those asked for, or every registered tool."""
    return registry.names() if request.tools is None else list(dict.fromkeys(request.tools))


def admit_run(
    raw: RunRequest | Mapping[str, Any], settings: Settings, *, check_callback: bool
) -> AdmittedRun:
    """``raw`` (a request, or its JSON) checked against the schema and ``settings``' limits,
    with its provider chain resolved; :class:`InvalidRequest` naming every problem otherwise.

    ``check_callback``: refuse a ``callback_url`` when the server has no callback secret.
    """
    request = _parse(raw)
    chain, problems = _run_checks(request, settings)
    if check_callback:
        problems += callback_problems(request.callback_url, settings)
    if chain is None or problems:
        raise InvalidRequest.of(problems)
    return AdmittedRun(request, chain)


def admit_tool_call(request: ToolCallRequest) -> ToolCallRequest:
    """``request`` if its tool exists and its arguments fit the tool's schema; else
    :class:`InvalidRequest`."""
    if problems := _tool_call_checks(request.name, request.arguments):
        raise InvalidRequest.of(problems)
    return request


def admit_batch(request: BatchRequest, settings: Settings) -> AdmittedBatch:
    """``request`` with every item checked (runs admitted as by :func:`admit_run`); else
    :class:`InvalidRequest` naming the first :data:`MAX_BATCH_PROBLEMS` or so problems."""
    problems: Problems = []
    items: list[AdmittedRun | ToolCallItem] = []
    if len(request.items) > settings.max_batch_items:
        limit = settings.max_batch_items
        problems.append(("items", f"{len(request.items)} items; the limit is {limit}"))
    else:
        problems += _batch_item_checks(request, settings, items)
    problems += callback_problems(request.callback_url, settings)
    if problems:
        raise InvalidRequest.of(problems)
    return AdmittedBatch(request, items)


def _batch_item_checks(
    request: BatchRequest, settings: Settings, admitted: list[AdmittedRun | ToolCallItem]
) -> Problems:
    """The problems of each item, up to about :data:`MAX_BATCH_PROBLEMS`, while appending the
    items to ``admitted`` (all of them when there is none)."""
    problems: Problems = []
    for index, item in enumerate(request.items):
        if isinstance(item, ToolCallItem):
            found = _tool_call_checks(item.name, item.arguments)
            admitted.append(item)
        else:
            run = item.as_run() if isinstance(item, PromptItem) else item
            chain, found = _run_checks(run, settings)
            if chain is not None:
                admitted.append(AdmittedRun(run, chain))
        problems += [(f"items.{index}.{f}", m) for f, m in found]
        if len(problems) >= MAX_BATCH_PROBLEMS:
            break
    return problems


def callback_problems(url: object, settings: Settings) -> Problems:
    """A ``callback_url`` is refused while the server has no secret to sign callbacks with."""
    if url is not None and settings.callback_secret is None:
        return [("callback_url", "callbacks are off: the server has no AGENTFLEET_CALLBACK_SECRET")]
    return []


def _parse(raw: RunRequest | Mapping[str, Any]) -> RunRequest:
    if isinstance(raw, RunRequest):
        return raw  # parsed by the API already: once is enough
    try:
        return RunRequest.model_validate(raw)
    except ValidationError as exc:
        problems = [(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]
        raise InvalidRequest.of(problems) from None


def _run_checks(request: RunRequest, settings: Settings) -> tuple[list[Target] | None, Problems]:
    """The provider chain of ``request`` (None if it does not resolve) and every limit it breaks."""
    problems: Problems = []
    prompt_chars = len(request.input) + len(request.system or "")
    if prompt_chars > settings.max_input_chars:
        problems.append(
            (
                "input",
                f"input and system prompt are {prompt_chars} characters; "
                f"the limit is {settings.max_input_chars}",
            )
        )
    if request.max_steps is not None and request.max_steps > settings.max_steps_limit:
        problems.append(
            (
                "max_steps",
                f"max_steps is {request.max_steps}; the limit is {settings.max_steps_limit}",
            )
        )
    if request.tools is not None:
        problems += _tools_checks(request.tools, settings)
    chain = None
    try:
        chain = resolve_chain(settings, request.model, request.providers)
    except RoutingError as exc:
        problems.append(("providers" if request.providers else "model", str(exc)))
    metadata_bytes = len(json.dumps(request.metadata).encode())
    if metadata_bytes > settings.max_metadata_bytes:
        problems.append(
            (
                "metadata",
                f"metadata is {metadata_bytes} bytes as JSON; the limit is "
                f"{settings.max_metadata_bytes}",
            )
        )
    return chain, problems


def _tools_checks(tools: list[str], settings: Settings) -> Problems:
    problems: Problems = []
    if len(tools) > settings.max_tools_per_run:
        problems.append(
            ("tools", f"{len(tools)} tools requested; the limit is {settings.max_tools_per_run}")
        )
    unknown = sorted({t for t in tools if t not in registry})
    if unknown:
        problems.append(("tools", f"unknown tools: {', '.join(unknown)}"))
    return problems


def _tool_call_checks(name: str, arguments: dict[str, Any]) -> Problems:
    if name not in registry:
        return [("name", f"no tool named {name!r}")]
    try:
        registry.get(name).validate(arguments)
    except ToolArgumentsError as exc:
        return [("arguments", str(exc))]
    return []
