"""Typed results: the JSON schema a run's final answer must match.

A run (or its agent) may name an output schema. The provider gets it as ``response_format``
(a strict JSON schema where the schema can be made strict, see :func:`strict_schema`), or,
for a provider that takes no ``response_format``, as an instruction. Whatever the provider
promises, the answer is checked here against the schema as given: an answer that is not JSON,
or not of the schema, is sent back to the model with what is wrong (a repair round) a few
times before the run fails with ``output_invalid``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ValidationError

from agentfleet.tasks.errors import OutputInvalid

#: Keys whose values are schemas, or maps or lists of schemas, walked by :func:`strict_schema`.
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SUBSCHEMA = ("items", "not", "additionalProperties", "contains")
#: Errors quoted back to the model in a repair round, at most.
MAX_ERRORS_SHOWN = 5


def canonical(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def schema_problems(schema: Any, max_bytes: int) -> list[str]:
    """What is wrong with ``schema`` as an output schema: not a JSON schema, too large, or its
    root not an object (what a chat-completions ``response_format`` takes)."""
    if not isinstance(schema, dict):
        return ["must be a JSON schema object"]
    text = canonical(schema)
    size = len(text.encode())
    if size > max_bytes:
        return [f"is {size} bytes as JSON; the limit is {max_bytes}"]
    return list(_shape_problems(text))


@lru_cache(maxsize=256)
def _shape_problems(text: str) -> tuple[str, ...]:
    """Checking a schema against the metaschema takes about half a millisecond: an agent's
    schema, sent with each of its runs, is checked once per process (by its canonical JSON)."""
    schema = json.loads(text)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return (f"is not a valid JSON schema: {exc.message}",)
    if schema.get("type") != "object":
        return ('its root must be {"type": "object", ...}: providers take object answers only',)
    return ()


def strict_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """``schema`` in the form OpenAI's strict structured outputs take (every object closed,
    every property required, no defaults), or None if it cannot be: an object that allows
    extra properties. Properties that were optional become required; an answer of the strict
    form is still an answer of ``schema``, which is what the answer is checked against."""
    strict = copy.deepcopy(schema)
    return strict if _make_strict(strict) else None


def _make_strict(node: Any) -> bool:
    if isinstance(node, list):
        return all(_make_strict(n) for n in node)
    if not isinstance(node, dict):
        return True
    node.pop("default", None)
    if node.get("type") == "object" or "properties" in node:
        extra = node.get("additionalProperties", False)
        if extra is not False:
            return False
        node["additionalProperties"] = False
        node["required"] = list(node.get("properties", {}))
    for key in _SUBSCHEMA_MAPS:
        if isinstance(node.get(key), dict) and not all(_make_strict(v) for v in node[key].values()):
            return False
    return all(_make_strict(node[k]) for k in (*_SUBSCHEMA_LISTS, *_SUBSCHEMA) if k in node)


@lru_cache(maxsize=256)
def _validator(canonical_schema: str) -> jsonschema.Draft202012Validator:
    # Compiled once per schema: an agent's schema is checked on every one of its runs.
    return jsonschema.Draft202012Validator(json.loads(canonical_schema))


@dataclass(frozen=True)
class OutputSpec:
    """The output a run must give: a JSON schema, and the pydantic model it was made from when
    this process has it (an agent defined in Python), whose own validators then run too."""

    name: str
    schema: dict[str, Any]
    model: type[BaseModel] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, name: str, output: type[BaseModel] | dict[str, Any]) -> OutputSpec:
        if isinstance(output, dict):
            return cls(name, output)
        schema = output.model_json_schema()
        return cls(name, schema, output)

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical(self.schema).encode()).hexdigest()[:16]

    def response_format(self) -> dict[str, Any]:
        """The ``response_format`` of a provider that takes JSON schemas."""
        strict = strict_schema(self.schema)
        return {
            "type": "json_schema",
            "json_schema": {
                "name": self.name,
                "schema": strict if strict is not None else self.schema,
                "strict": strict is not None,
            },
        }

    def instruction(self) -> str:
        """The schema as words, for a provider that takes no ``response_format``."""
        return (
            "Give your final answer as one JSON value, with no other text, that matches this "
            f"JSON schema:\n{canonical(self.schema)}"
        )

    def check(self, text: str | None) -> Any:
        """The answer ``text`` as JSON if it matches the schema; :class:`OutputInvalid` saying
        what is wrong otherwise."""
        try:
            value = json.loads(text or "")
        except json.JSONDecodeError as exc:
            raise OutputInvalid(
                f"the answer is not JSON: {exc.msg} at position {exc.pos}"
            ) from None
        errors = sorted(_validator(canonical(self.schema)).iter_errors(value), key=str)
        if errors:
            shown = "; ".join(_described(e) for e in errors[:MAX_ERRORS_SHOWN])
            raise OutputInvalid(f"the answer does not match the output schema: {shown}")
        if self.model is not None:
            try:
                self.model.model_validate(value)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()
                )
                raise OutputInvalid(
                    f"the answer does not match the output type: {problems}"
                ) from None
        return value

    def repair_message(self, problem: str) -> dict[str, Any]:
        """The message that sends an invalid answer back to the model."""
        return {
            "role": "user",
            # Named, so the transcript (and the simulator) tells it from the user's input.
            "name": "output_repair",
            "content": f"Your answer was not accepted: {problem}. Answer again with only the "
            "JSON value the output schema asks for.",
        }


def _described(error: jsonschema.ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message}"
