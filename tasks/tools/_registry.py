"""``@tool``: typed Python functions become tools with a JSON schema and validated arguments."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import json
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from agentfleet.tasks.errors import ConfigError, ToolArgumentsError, UnknownToolError

ToolFunc = Callable[..., Any]

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True)
class Tool:
    """A registered tool: the function, its argument model and its JSON schema."""

    name: str
    description: str
    func: ToolFunc
    arguments: type[BaseModel]
    timeout: float | None = None
    #: Seconds a successful result is reused for the same arguments (per tenant); None: never.
    cache_ttl: float | None = None
    #: Whether each call waits for a person's approval before it runs (agentfleet.tasks.waits).
    requires_approval: bool = False
    #: Whether a run that names no tools gets this one (``ask_human`` it must name: a run
    #: whose model may stop to ask a person is one that expects it).
    by_default: bool = True
    _output: TypeAdapter[Any] = field(repr=False, default_factory=lambda: TypeAdapter(Any))

    @cached_property
    def parameters(self) -> dict[str, Any]:
        """JSON schema of the arguments object (computed once: it is on every step's path)."""
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        return schema

    @cached_property
    def openai_schema(self) -> dict[str, Any]:
        """The ``tools=[...]`` entry the chat-completions API expects."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    @cached_property
    def schema_hash(self) -> str:
        """A short digest of :attr:`openai_schema`: equal hashes, the same tool to a model."""
        canonical = json.dumps(self.openai_schema, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def validate(self, arguments: str | dict[str, Any] | None) -> BaseModel:
        """Parse and check arguments (a JSON string from a model, or a dict from a caller)."""
        if arguments is None or arguments == "":
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise ToolArgumentsError(
                    f"arguments for {self.name!r} are not valid JSON: {exc.msg}"
                ) from None
        if not isinstance(arguments, dict):
            raise ToolArgumentsError(f"arguments for {self.name!r} must be a JSON object")
        try:
            return self.arguments.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ToolArgumentsError(f"invalid arguments for {self.name!r}: {problems}") from None

    def arguments_digest(self, model: BaseModel) -> str:
        """SHA-256 of validated arguments as canonical JSON (keys sorted at every level): the
        same arguments in any key order, or with defaults left out or spelt out, are equal."""
        canonical = json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def invoke(self, arguments: str | dict[str, Any] | None) -> Any:
        """Validate, run, and return a JSON-compatible output."""
        return self.call(self.validate(arguments))

    def call(self, model: BaseModel) -> Any:
        """Run on arguments :meth:`validate` returned; return a JSON-compatible output.

        An ``async def`` tool runs to completion on an event loop of its own, in the calling
        thread: the tool task's main thread, where Celery's soft time limit interrupts the
        loop like any other code (and the hard limit ends the process).
        """
        result = self.func(**{name: getattr(model, name) for name in type(model).model_fields})
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        return self._output.dump_python(result, mode="json")


async def _awaited(value: Awaitable[Any]) -> Any:
    # asyncio.run takes coroutines only; a tool may return any awaitable.
    return await value


class ToolRegistry:
    """Name -> :class:`Tool`. The process-wide one is :data:`registry`."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def add(self, item: Tool) -> Tool:
        existing = self._tools.get(item.name)
        if existing is not None and existing.func is not item.func:
            raise ConfigError(f"two tools are named {item.name!r}")
        self._tools[item.name] = item
        return item

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownToolError(f"no tool named {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        return sorted(self._tools)

    def default_names(self) -> list[str]:
        """The tools a run that names none gets: all but those a run must ask for by name."""
        return sorted(n for n, t in self._tools.items() if t.by_default)

    def name_of(self, func: ToolFunc) -> str | None:
        """The name ``func`` is registered under, if it is a registered tool's function."""
        return next((t.name for t in self._tools.values() if t.func is func), None)

    def all(self) -> list[Tool]:
        return [self._tools[n] for n in self.names()]


registry = ToolRegistry()


def _argument_model(name: str, func: ToolFunc) -> type[BaseModel]:
    hints = get_type_hints(func, include_extras=True)
    fields: dict[str, Any] = {}
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(f"tool {name!r}: *args/**kwargs cannot be described as a schema")
        if param.name not in hints:
            raise ConfigError(f"tool {name!r}: parameter {param.name!r} needs a type annotation")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints[param.name], default)
    model: type[BaseModel] = create_model(
        f"{name}_arguments",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    return model


def _cache_ttl(name: str, value: object) -> float | None:
    """``cache_ttl`` checked: None, or a finite number of seconds above 0."""
    if value is None:
        return None
    # bool is an int to Python, but True is no number of seconds.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"tool {name!r}: cache_ttl must be a number of seconds, not {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"tool {name!r}: cache_ttl must be above 0 seconds, not {value!r}")
    return float(value)


def _make_tool(
    func: ToolFunc,
    name: str | None,
    description: str | None,
    timeout: float | None,
    cache_ttl: float | None = None,
    requires_approval: bool = False,
) -> Tool:
    tool_name = name or func.__name__
    if not tool_name or not set(tool_name) <= _NAME_CHARS or len(tool_name) > 64:
        raise ConfigError(f"tool name {tool_name!r} must be 1-64 of [A-Za-z0-9_-]")
    ttl = _cache_ttl(tool_name, cache_ttl)
    doc = description or inspect.getdoc(func) or ""
    hints = get_type_hints(func, include_extras=True)
    output: TypeAdapter[Any] = TypeAdapter(hints.get("return", Any))
    return Tool(
        name=tool_name,
        description=doc.strip().split("\n\n")[0],
        func=func,
        arguments=_argument_model(tool_name, func),
        timeout=timeout,
        cache_ttl=ttl,
        requires_approval=requires_approval,
        _output=output,
    )


@overload
def tool(func: ToolFunc, /) -> ToolFunc: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    cache_ttl: float | None = None,
    requires_approval: bool = False,
) -> Callable[[ToolFunc], ToolFunc]: ...


def tool(
    func: ToolFunc | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    cache_ttl: float | None = None,
    requires_approval: bool = False,
) -> ToolFunc | Callable[[ToolFunc], ToolFunc]:
    """Register a typed function as a tool.

    The JSON schema comes from the annotations, the description from the docstring's first
    paragraph; ``timeout`` (seconds) caps one call (default: ``AGENTFLEET_TOOL_SOFT_TIME_LIMIT``).
    ``cache_ttl`` (seconds, > 0) keeps a successful result for that long, and a call of the
    same tenant with the same arguments gets it without running the function; a ``cache_ttl``
    that is not a number above 0 is a :class:`~agentfleet.tasks.errors.ConfigError` here.
    ``requires_approval`` makes every call of a run wait for a person's approval before it
    runs (``POST /v1/runs/{id}/approvals``; :mod:`agentfleet.tasks.waits`).
    The function itself is returned unchanged, so it stays callable and testable.

    >>> @tool
    ... def add(a: int, b: int) -> int:
    ...     '''Add two integers.'''
    ...     return a + b
    """

    def decorate(f: ToolFunc) -> ToolFunc:
        if not isinstance(requires_approval, bool):
            raise ConfigError(f"tool {name or f.__name__!r}: requires_approval must be a bool")
        registry.add(_make_tool(f, name, description, timeout, cache_ttl, requires_approval))
        return f

    return decorate(func) if func is not None else decorate


def load_tool_modules(modules: Iterable[str]) -> None:
    """Import the user's tool modules so their ``@tool`` functions register."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"cannot import tool module {module!r}: {exc}") from exc
