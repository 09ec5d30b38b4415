"""Structured output: the ``response_format`` of a request and the JSON answered for it.

``parse_response_format`` validates the request field as OpenAI does (a 400 for a
malformed one). ``instance`` builds the deterministic JSON value a schema's answer holds:

- an object gets its *required* properties only (all of them under ``strict``);
- a string is the ``const``, the first ``enum`` value, or the prompt's text (``"text"``
  when the prompt has none), cut to ``STRING_LIMIT`` characters;
- a property named in ``known`` (the turn's tool arguments and results) takes that value
  instead, when it is of the same JSON type (or one of the ``enum``);
- an integer or a number is its ``minimum`` when there is one, else ``0``;
- a boolean is ``true``, null is ``null``;
- an array holds ``minItems`` items (at least one), each built from ``items``;
- ``$ref`` (``#/$defs/...`` or ``#/definitions/...``) is resolved, ``anyOf`` / ``oneOf``
  take their first branch, ``allOf`` merges its branches, and a type list takes its first
  type that is not ``"null"``. Past ``MAX_DEPTH`` nested levels a value is ``null``, so a
  recursive schema ends.

``violation`` is the JSON of a scripted invalid answer that parses but breaks the schema:
the instance without its first required property, or ``[]`` when the root requires none.
Nothing here does I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._responses import RequestError

STRING_LIMIT = 40
"""Maximum number of prompt characters put in each string of a schema's answer."""

MAX_DEPTH = 8
"""Nesting depth past which ``instance`` answers ``null`` (recursive schemas end)."""

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FORMATS = ("text", "json_object", "json_schema")


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """A request's ``response_format`` other than plain text."""

    kind: str
    """``json_object`` or ``json_schema``."""
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool = False


def parse_response_format(value: Any, conversation: Callable[[], str]) -> OutputFormat | None:
    """Validate ``response_format``; ``None`` for plain text (or when absent).

    ``conversation`` returns the text of every message: ``json_object`` needs the
    word "json" in it, as OpenAI requires.
    """
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in _FORMATS:
        raise RequestError(
            "Invalid value for 'response_format.type': expected one of 'text', "
            "'json_object', 'json_schema'.",
            "response_format.type",
        )
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        if "json" not in conversation().lower():
            raise RequestError(
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.",
                "messages",
            )
        return OutputFormat("json_object")
    return _json_schema_format(value.get("json_schema"))


def _json_schema_format(spec: Any) -> OutputFormat:
    """Validate the ``json_schema`` member of a ``json_schema`` response format."""
    param = "response_format.json_schema"
    if not isinstance(spec, dict):
        raise RequestError(f"Missing required parameter: '{param}'.", param)
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise RequestError(
            f"Invalid '{param}.name': a string of 1 to 64 letters, digits, '_' or '-'.",
            f"{param}.name",
        )
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise RequestError(
            f"Invalid type for '{param}.schema': expected an object.", f"{param}.schema"
        )
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise RequestError(
            f"Invalid type for '{param}.strict': expected a boolean.", f"{param}.strict"
        )
    if strict and schema is not None:
        problem = strict_problem(schema)
        if problem is not None:
            raise RequestError(f"Invalid schema for response_format '{name}': {problem}", param)
    return OutputFormat("json_schema", name, schema, bool(strict))


def strict_problem(schema: dict[str, Any], where: str = "") -> str | None:
    """Why ``schema`` cannot be used with ``strict``, or ``None`` when it can.

    The two rules OpenAI checks first: every object sets ``additionalProperties``
    to false and lists all of its properties as required.
    """
    if _is_object(schema):
        context = f"In context=({where or 'root'}),"
        if schema.get("additionalProperties") is not False:
            return f"{context} 'additionalProperties' is required to be supplied and to be false."
        properties = schema.get("properties") or {}
        missing = sorted(set(properties) - set(schema.get("required") or ()))
        if missing:
            return f"{context} 'required' must list every property; {missing[0]!r} is missing."
    for key, child in _children(schema):
        problem = strict_problem(child, f"{where}/{key}" if where else key)
        if problem is not None:
            return problem
    return None


def _is_object(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind)


def _children(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The sub-schemas of ``schema``, each with its path segment."""
    found: list[tuple[str, dict[str, Any]]] = []
    for group in ("properties", "$defs", "definitions"):
        members = schema.get(group)
        if isinstance(members, dict):
            found += [(f"{group}/{k}", v) for k, v in members.items() if isinstance(v, dict)]
    if isinstance(schema.get("items"), dict):
        found.append(("items", schema["items"]))
    for group in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(group)
        if isinstance(branches, list):
            found += [(f"{group}/{i}", b) for i, b in enumerate(branches) if isinstance(b, dict)]
    return found


def instance(schema: dict[str, Any], text: str, known: dict[str, Any] | None = None) -> Any:
    """The deterministic value ``schema``'s answer holds (see the module docstring); a
    property named in ``known`` takes that value when it is of the property's type."""
    return _Builder(schema, text[:STRING_LIMIT] or "text", known).build(schema, 0)


def violation(schema: dict[str, Any] | None, text: str) -> Any:
    """A JSON value that parses but breaks ``schema``: a required property goes missing."""
    if schema is None:
        return []
    value = instance(schema, text)
    required = _Builder(schema, "").resolve(schema).get("required")
    if not isinstance(value, dict) or not required:
        return []
    return {key: item for key, item in value.items() if key != required[0]}


def answer_json(output: OutputFormat, text: str) -> str:
    """The JSON text of a valid answer for ``output``; ``text`` is the prompt's text."""
    if output.schema is None:
        return json.dumps({"answer": text})
    return json.dumps(instance(output.schema, text))


class _Builder:
    """Walks one schema, resolving its references against the root."""

    def __init__(
        self, root: dict[str, Any], text: str, known: dict[str, Any] | None = None
    ) -> None:
        self._root = root
        self._text = text
        self._known = known or {}

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Follow ``$ref`` (local references only) until a schema without one."""
        for _ in range(MAX_DEPTH):
            ref = schema.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#/"):
                return schema
            target: Any = self._root
            for part in ref[2:].split("/"):
                target = target.get(part) if isinstance(target, dict) else None
            if not isinstance(target, dict):
                return {}
            schema = target
        return schema

    def build(self, schema: dict[str, Any], depth: int) -> Any:
        schema = self.resolve(schema)
        if depth > MAX_DEPTH:
            return None
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        for group in ("anyOf", "oneOf"):
            branches = schema.get(group)
            if isinstance(branches, list) and branches and isinstance(branches[0], dict):
                return self.build(branches[0], depth + 1)
        if isinstance(schema.get("allOf"), list):
            return self.build(self._merged(schema), depth + 1)
        return self._by_type(schema, _first_type(schema), depth)

    def _value(self, key: str, schema: dict[str, Any], depth: int) -> Any:
        """A property's value: the known one of its name if it fits, else one built."""
        built = self.build(schema, depth)
        if key not in self._known:
            return built
        known = self._known[key]
        enum = self.resolve(schema).get("enum")
        fits = known in enum if isinstance(enum, list) else type(known) is type(built)
        return known if fits else built

    def _merged(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``allOf`` as one object schema: the union of properties and of required."""
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for branch in [schema, *schema["allOf"]]:
            part = self.resolve(branch) if isinstance(branch, dict) else {}
            merged["properties"].update(part.get("properties") or {})
            merged["required"] += list(part.get("required") or ())
        return merged

    def _by_type(self, schema: dict[str, Any], kind: str | None, depth: int) -> Any:
        if kind == "object":
            properties = schema.get("properties") or {}
            return {
                key: self._value(key, properties.get(key) or {}, depth + 1)
                for key in schema.get("required") or ()
            }
        if kind == "array":
            items = schema.get("items")
            count = max(1, int(schema.get("minItems") or 0))
            return [self.build(items if isinstance(items, dict) else {}, depth + 1)] * count
        if kind in ("integer", "number"):
            minimum = schema.get("minimum")
            return minimum if isinstance(minimum, int | float) else 0
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self._text


def _first_type(schema: dict[str, Any]) -> str | None:
    """The schema's type; of a list of types, the first that is not ``"null"``."""
    kind = schema.get("type")
    if isinstance(kind, list):
        named = [k for k in kind if k != "null"] or kind
        return str(named[0]) if named else None
    if kind is None and isinstance(schema.get("properties"), dict):
        return "object"
    return kind if isinstance(kind, str) else None


__all__ = [
    "MAX_DEPTH",
    "STRING_LIMIT",
    "OutputFormat",
    "answer_json",
    "instance",
    "parse_response_format",
    "strict_problem",
    "violation",
]
