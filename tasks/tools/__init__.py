"""Tools: ``@tool`` on a typed function registers it; ``registry`` holds them all.

Built-in tools load with this package. Your own tools live in your modules and are loaded by
naming them in ``AGENTFLEET_TOOL_MODULES`` (comma-separated), on workers and on the API alike.
"""

from agentfleet.tasks.tools import builtin
from agentfleet.tasks.tools._registry import (
    Tool,
    ToolFunc,
    ToolRegistry,
    load_tool_modules,
    registry,
    tool,
)

__all__ = ["Tool", "ToolFunc", "ToolRegistry", "builtin", "load_tool_modules", "registry", "tool"]
