"""OpenAI-compatible chat-completions simulator.

A deterministic stand-in for an LLM provider, scripted by directives in the
first user message (see ``agentfleet.simulator._script``). It is the default
provider offline and the target of tests and benchmarks; run it with
``python -m agentfleet.simulator``. Faults (errors, hangs, latency) can be injected
per provider at runtime through ``/_sim/providers/{name}/faults``; see
``agentfleet.simulator.faults`` for a client and command line. Structured output
(``response_format``) and model settings are honoured (``_schema``, ``_settings``), and
every request body is kept for tests to read (``GET /_sim/requests``; the client is
``agentfleet.simulator.control``, which also sets a provider's default usage).
"""

from ._app import SimulatorConfig, create_app

__all__ = ["SimulatorConfig", "create_app"]
