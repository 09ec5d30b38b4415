"""Tools every fleet has: arithmetic, the clock, JSON and text utilities."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import operator
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field

from agentfleet.tasks.errors import ToolArgumentsError, ToolExecutionError
from agentfleet.tasks.tools._registry import _make_tool, registry, tool

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
#: Bounds that keep one expression from eating a worker (``9**9**9`` would).
_MAX_EXPONENT = 1000
_MAX_MAGNITUDE = 1e100


def _evaluate(node: ast.AST) -> float:
    match node:
        case ast.Expression(body=body):
            return _evaluate(body)
        case ast.Constant(value=value) if isinstance(value, int | float) and not isinstance(
            value, bool
        ):
            return value
        case ast.Name(id=name) if name in _CONSTANTS:
            return _CONSTANTS[name]
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
            a, b = _evaluate(left), _evaluate(right)
            if isinstance(op, ast.Pow) and abs(b) > _MAX_EXPONENT:
                raise ToolArgumentsError(f"exponent {b} is too large")
            result = _BINARY[type(op)](a, b)
        case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY:
            result = _UNARY[type(op)](_evaluate(operand))
        case ast.Call(func=ast.Name(id=fname), args=args, keywords=[]) if fname in _FUNCTIONS:
            result = _FUNCTIONS[fname](*(_evaluate(a) for a in args))
        case _:
            raise ToolArgumentsError(f"unsupported expression element: {ast.dump(node)[:60]}")
    if isinstance(result, complex) or abs(result) > _MAX_MAGNITUDE:
        raise ToolArgumentsError("result is out of range")
    return float(result)


@tool
def calculator(expression: Annotated[str, Field(max_length=500)]) -> float:
    """Evaluate an arithmetic expression: + - * / // % **, parentheses, pi, e, sqrt, abs,
    round, min, max, log, exp, sin, cos. Parsed, never passed to eval."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ToolArgumentsError(f"not an arithmetic expression: {exc.msg}") from None
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        raise ToolArgumentsError("division by zero") from None
    return float(value)


@tool
def current_time(timezone: str = "UTC") -> str:
    """The current date and time in ISO 8601, in an IANA time zone such as Europe/Paris."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolArgumentsError(f"unknown time zone {timezone!r}") from None
    return datetime.now(UTC).astimezone(zone).isoformat(timespec="seconds")


@tool
def json_extract(document: str, path: str) -> Any:
    """Pick a value out of a JSON document by a dotted path such as ``items.0.name``."""
    try:
        value: Any = json.loads(document)
    except json.JSONDecodeError as exc:
        raise ToolArgumentsError(f"document is not JSON: {exc.msg}") from None
    for part in filter(None, path.split(".")):
        if (
            isinstance(value, list)
            and part.lstrip("-").isdigit()
            and -len(value) <= int(part) < len(value)
        ):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise ToolArgumentsError(f"path {path!r} not found at {part!r}")
    return value


@tool
def text_stats(text: str) -> dict[str, int]:
    """Count characters, words and lines in a text."""
    return {"characters": len(text), "words": len(text.split()), "lines": len(text.splitlines())}


@tool
def transform_text(text: str, operation: Literal["upper", "lower", "title", "reverse"]) -> str:
    """Change the case of a text, or reverse it."""
    if operation == "reverse":
        return text[::-1]
    return str(getattr(text, operation)())


@tool
def wait(seconds: Annotated[float, Field(ge=0, le=30)]) -> float:
    """Wait some seconds and return how long it waited (for demos of parallel tool calls)."""
    start = time.monotonic()
    time.sleep(seconds)
    return round(time.monotonic() - start, 3)


def ask_human(question: Annotated[str, Field(min_length=1, max_length=10_000)]) -> str:
    """Ask a person a question and get their answer (the run waits until they answer)."""
    # A run never runs it: its step waits for the answer (agentfleet.tasks.waits), which is
    # stored as the call's result before the call is dispatched. Only a direct call gets here.
    raise ToolExecutionError(
        "ask_human is answered by a person through POST /v1/runs/{id}/input; "
        "it cannot be called outside a run"
    )


# Offered only to runs that name it (Tool.by_default).
registry.add(dataclasses.replace(_make_tool(ask_human, None, None, None), by_default=False))
