"""What the fleet shows of what runs carried: secrets in transcripts, tool arguments and tool
outputs are replaced with ``[redacted]`` before any view shows them (``GET /v1/runs/{id}/steps``,
the run explorer).

Two rules, both settings: the value of any JSON object key named in ``redact_fields``
(compared without case, ``-`` and ``_``: ``api_key``, ``API-Key`` and ``apikey`` are one), and
any text matching one of ``redact_patterns`` (regular expressions: by default bearer tokens,
``sk-...`` API keys, AWS access key IDs, private key blocks). Tool arguments that the model
wrote as JSON text are parsed, redacted and written back as JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

MASK = "[redacted]"


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


class Redactor:
    """Applies the fleet's redaction rules (one per process and settings)."""

    def __init__(self, fields: Iterable[str], patterns: Iterable[str]) -> None:
        self.fields = frozenset(_norm(f) for f in fields)
        # Compiled one by one: a pattern may carry its own flags, as (?i), which must start it.
        self.patterns = [re.compile(p) for p in patterns if p]

    def text(self, value: str) -> str:
        for pattern in self.patterns:
            value = pattern.sub(MASK, value)
        return value

    def value(self, value: Any) -> Any:
        """``value`` (JSON: objects, lists, strings, numbers) with secrets replaced."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {
                k: MASK if _norm(str(k)) in self.fields else self.value(v) for k, v in value.items()
            }
        return value

    def message(self, message: dict[str, Any]) -> dict[str, Any]:
        """A chat message with its content and its tool calls' arguments redacted."""
        shown = dict(message)
        if "content" in shown:
            shown["content"] = self.value(shown["content"])
        if shown.get("tool_calls"):
            shown["tool_calls"] = [self._call(c) for c in shown["tool_calls"]]
        return shown

    def _call(self, call: dict[str, Any]) -> dict[str, Any]:
        function = dict(call.get("function") or {})
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                function["arguments"] = json.dumps(self.value(json.loads(arguments)))
            except json.JSONDecodeError:
                function["arguments"] = self.text(arguments)
        return {**call, "function": function}
