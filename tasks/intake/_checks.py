"""Checking a request once: the schema, the limits of the settings, the provider chain."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agentfleet.tasks.agents import OVERRIDABLE, Agent, RunContext
from agentfleet.tasks.agents import registry as agents
from agentfleet.tasks.errors import ConfigError, InvalidRequest, ToolArgumentsError
from agentfleet.tasks.llm import RoutingError, Target, resolve_chain
from agentfleet.tasks.models import (
    BatchRequest,
    ModelSettings,
    PromptItem,
    RunRequest,
    ToolCallItem,
    ToolCallRequest,
)
from agentfleet.tasks.output import schema_problems
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.tools import registry

#: ``(field, message)`` for each thing wrong with a request.
Problems = list[tuple[str, str]]

#: The run request fields that carry a definition an agent may let a run override.
OVERRIDABLE_FIELDS = frozenset(OVERRIDABLE)

#: Problems a batch's refusal names at most: enough to fix; a 10,000-item report helps nobody.
MAX_BATCH_PROBLEMS = 20


@dataclass(frozen=True)
class AdmittedRun:
    """A run request that passed every check, with the provider chain it resolved to. A run
    of an agent has the agent's definition in ``request`` (where the request did not override
    it) and its input rendered as text; ``agent`` and ``input`` are kept for its instructions."""

    request: RunRequest
    chain: list[Target]
    agent: Agent | None = None
    #: The input as the caller sent it (an object for an agent with an input type).
    input: str | dict[str, Any] = ""

    def tools(self, every_tool: Sequence[str] | None = None) -> list[str]:
        """The run's tools: those it names, else ``every_tool`` (default: every registered one)."""
        if self.request.tools is None and every_tool is not None:
            return list(every_tool)
        return resolve_tools(self.request)

    def prepared(self, run_id: str, tenant: str) -> RunRequest:
        """The request to write for run ``run_id``: with the agent's instructions, made for
        this run when they are a function of it."""
        agent = self.agent
        if agent is None or "system" in self.request.model_fields_set:
            return self.request
        context = RunContext(run_id, tenant, agent.name, self.input, self.request.metadata)
        try:
            system = agent.instructions_for(context)
        except ConfigError:
            raise
        except Exception as exc:
            # A fault of the agent's code, not of the request: named, so its owner can fix it.
            raise ConfigError(
                f"agent {agent.name!r}: its instructions function failed: {exc!r}"
            ) from exc
        return self.request.model_copy(update={"system": system or None})


@dataclass(frozen=True)
class AdmittedBatch:
    """A batch that passed every check: its items in order, runs admitted, tool calls as sent."""

    request: BatchRequest
    items: list[AdmittedRun | ToolCallItem]


def resolve_tools(request: RunRequest) -> list[str]:
    """The tool names a run may use: those asked for, or every tool given by default."""
    if request.tools is None:
        return registry.default_names()
    return list(dict.fromkeys(request.tools))


def admit_run(
    raw: RunRequest | Mapping[str, Any], settings: Settings, *, check_callback: bool
) -> AdmittedRun:
    """``raw`` (a request, or its JSON) checked against the schema and ``settings``' limits,
    with its provider chain resolved; :class:`InvalidRequest` naming every problem otherwise.

    ``check_callback``: refuse a ``callback_url`` when the server has no callback secret.
    """
    sent = _parse(raw)
    request, agent, problems = with_agent(sent)
    chain, found = _run_checks(request, settings)
    problems += found
    if check_callback:
        problems += callback_problems(request.callback_url, settings)
    if chain is None or problems:
        raise InvalidRequest.of(problems)
    return AdmittedRun(request, chain, agent, sent.input)


def with_agent(request: RunRequest) -> tuple[RunRequest, Agent | None, Problems]:
    """``request`` with its agent's definition put in where the request does not override it
    (and the problems: an unknown agent, an override the agent does not allow, an input the
    agent does not take). A request that names no agent is returned as it is."""
    if request.agent is None:
        if isinstance(request.input, dict):
            return request, None, [("input", "an object input needs an agent that takes one")]
        return request, None, []
    if request.agent not in agents:
        known = ", ".join(agents.names()) or "none"
        return request, None, [("agent", f"no agent named {request.agent!r} (declared: {known})")]
    agent = agents.get(request.agent)
    given = {f for f in request.model_fields_set if getattr(request, f) is not None}
    problems: Problems = [
        (name, f"agent {agent.name!r} does not let a run set {name} (allow_overrides)")
        for name in sorted((given & OVERRIDABLE_FIELDS) - agent.allow_overrides)
    ]
    text, wrong = agent.render_input(request.input)
    problems += [("input", w) for w in wrong]
    update: dict[str, Any] = {"input": text or "(invalid input)"}
    if "system" not in given and isinstance(agent.instructions, str):
        update["system"] = agent.instructions or None
    if "model" not in given and "providers" not in given:
        model = agent.model
        update["model"] = model if isinstance(model, str) or model is None else None
        update["providers"] = None if agent.providers is None else list(agent.providers)
    if "tools" not in given:
        update["tools"] = agent.tool_names
    # The agents it may call and hand over to (empty lists are left unset: none).
    calls = {"subagents": agent.subagent_names, "handoffs": agent.handoff_names}
    update |= {k: v for k, v in calls.items() if v and k not in given}
    # The agent's value of each field the run leaves unset (False is left unset: the default).
    for name in ("max_steps", "context_budget", "cache_ttl", "context_summary"):
        if name not in given and (value := getattr(agent, name)) is not False:
            update[name] = value
    if "output_schema" not in given and agent.output is not None:
        update["output_schema"] = agent.output.schema
    base = agent.model_settings
    assert base is None or isinstance(base, ModelSettings)
    if base is not None:
        update["model_settings"] = base.merged(request.model_settings)
    # model_copy keeps which fields were set: "system" stays unset when the agent gives it.
    return request.model_copy(update=update), agent, problems


def _chain(request: RunRequest, settings: Settings) -> list[Target]:
    """The run's provider chain: from its model and providers, or, for an agent whose model is
    a list of ``provider:model`` the run does not override, that list."""
    agent = agents.get(request.agent) if request.agent and request.agent in agents else None
    listed = agent.model if agent is not None else None
    if request.model is None and request.providers is None and isinstance(listed, list | tuple):
        return [target for model in listed for target in resolve_chain(settings, model)]
    return resolve_chain(settings, request.model, request.providers)


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
    if len(request.items) > settings.api.max_batch_items:
        limit = settings.api.max_batch_items
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
            sent = item.as_run() if isinstance(item, PromptItem) else item
            run, agent, found = with_agent(sent)
            if sent.thread_id is not None:
                # A batch's runs are independent and run at once: none waits on a thread.
                found.append(("thread_id", "a batch's runs cannot be on a thread"))
            chain, more = _run_checks(run, settings)
            found += more
            if chain is not None:
                admitted.append(AdmittedRun(run, chain, agent, sent.input))
        problems += [(f"items.{index}.{f}", m) for f, m in found]
        if len(problems) >= MAX_BATCH_PROBLEMS:
            break
    return problems


def transcript_problems(request: RunRequest, tenant: str, settings: Settings) -> Problems:
    """What a run of a tenant whose transcripts must not outlive their runs cannot have: a
    thread (its history is the transcript, kept for the next run) and a stream (its tokens are
    events, kept with the run's). A cache_ttl is not refused: the run uses no cache."""
    if settings.tenants.keeps_transcripts(tenant):
        return []
    why = f"tenant {tenant!r} keeps no transcripts (AGENTFLEET_TENANT_NO_TRANSCRIPT)"
    found: Problems = []
    if request.thread_id is not None:
        found.append(("thread_id", f"{why}, and a thread keeps its history"))
    if request.stream:
        found.append(("stream", f"{why}, and streamed tokens are kept as events"))
    return found


def batch_transcript_problems(batch: AdmittedBatch, tenant: str, settings: Settings) -> Problems:
    """:func:`transcript_problems` of each run of ``batch``, named ``items.<n>.<field>``."""
    return [
        (f"items.{index}.{name}", message)
        for index, item in enumerate(batch.items)
        if isinstance(item, AdmittedRun)
        for name, message in transcript_problems(item.request, tenant, settings)
    ]


def callback_problems(url: object, settings: Settings) -> Problems:
    """A ``callback_url`` is refused while the server has no secret to sign callbacks with."""
    if url is not None and settings.api.callback_secret is None:
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
    prompt_chars = len(str(request.input)) + len(request.system or "")
    if prompt_chars > settings.runs.max_input_chars:
        problems.append(
            (
                "input",
                f"input and system prompt are {prompt_chars} characters; "
                f"the limit is {settings.runs.max_input_chars}",
            )
        )
    if request.max_steps is not None and request.max_steps > settings.runs.max_steps_limit:
        problems.append(
            (
                "max_steps",
                f"max_steps is {request.max_steps}; the limit is {settings.runs.max_steps_limit}",
            )
        )
    if request.tools is not None:
        problems += _tools_checks(request.tools, settings)
    for field in ("subagents", "handoffs"):
        if unknown := sorted({a for a in getattr(request, field) or [] if a not in agents}):
            problems.append((field, f"unknown agents: {', '.join(unknown)}"))
    if clash := sorted(set(request.subagents or []) & set(resolve_tools(request))):
        problems.append(("subagents", f"named like a tool of the run: {', '.join(clash)}"))
    if request.output_schema is not None:
        limit = settings.runs.max_output_schema_bytes
        problems += [("output_schema", p) for p in schema_problems(request.output_schema, limit)]
    chain = None
    try:
        chain = _chain(request, settings)
    except RoutingError as exc:
        problems.append(("providers" if request.providers else "model", str(exc)))
    metadata_bytes = len(json.dumps(request.metadata).encode())
    if metadata_bytes > settings.runs.max_metadata_bytes:
        problems.append(
            (
                "metadata",
                f"metadata is {metadata_bytes} bytes as JSON; the limit is "
                f"{settings.runs.max_metadata_bytes}",
            )
        )
    return chain, problems


def _tools_checks(tools: list[str], settings: Settings) -> Problems:
    problems: Problems = []
    if len(tools) > settings.runs.max_tools_per_run:
        problems.append(
            (
                "tools",
                f"{len(tools)} tools requested; the limit is {settings.runs.max_tools_per_run}",
            )
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
