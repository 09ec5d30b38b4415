"""Which providers a run may use, in order: its fallback chain."""

from __future__ import annotations

from dataclasses import dataclass

from agentfleet.tasks.setting_groups import ProviderConfig
from agentfleet.tasks.settings import Settings


@dataclass(frozen=True)
class Target:
    """One link of a chain: ask ``provider`` for ``model``."""

    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


class RoutingError(ValueError):
    """The run asks for a model or provider the fleet does not have."""


def _default_model(provider: ProviderConfig, settings: Settings) -> str:
    if provider.default_model:
        return provider.default_model
    return provider.models[0] if provider.models else settings.llm.llm_model


def resolve_chain(
    settings: Settings, model: str | None, providers: list[str] | None = None
) -> list[Target]:
    """The ordered targets for a run.

    - ``providers`` names the chain explicitly (each with ``model`` or its default model);
    - ``model`` may be an alias (``AGENTFLEET_MODEL_ALIASES``), ``provider:model``, or a plain
      model name served by one or more providers (in priority order); a name with a colon
      whose first part is no provider's name (``llama3:8b``) must be listed in some provider's
      ``models``;
    - neither: every provider in priority order, each with its default model.
    """
    configured = {p.name: p for p in settings.llm.provider_list}
    by_priority = sorted(configured.values(), key=lambda p: p.priority)
    if providers:
        unknown = [name for name in providers if name not in configured]
        if unknown:
            raise RoutingError(f"unknown providers: {', '.join(unknown)}")
        chain = [
            Target(name, model or _default_model(configured[name], settings)) for name in providers
        ]
        unserved = [str(t) for t in chain if not configured[t.provider].serves(t.model)]
        if unserved:
            raise RoutingError(f"providers do not serve these models: {', '.join(unserved)}")
        return chain
    if model is None:
        return [Target(p.name, _default_model(p, settings)) for p in by_priority]
    if model in settings.llm.model_aliases:
        return [Target(*t.split(":", 1)) for t in settings.llm.model_aliases[model]]
    name, sep, rest = model.partition(":")
    if sep and name in configured:
        if not configured[name].serves(rest):
            raise RoutingError(f"provider {name!r} does not serve model {rest!r}")
        return [Target(name, rest)]
    if sep and not any(model in p.models for p in by_priority):
        # A typo in a provider's name would otherwise reach a provider that serves any model.
        raise RoutingError(
            f"no provider named {name!r} (providers: {', '.join(configured)}); for a model "
            f"whose name has a colon, list it in a provider's models or ask for "
            f"'provider:{model}'"
        )
    chain = [Target(p.name, model) for p in by_priority if p.serves(model)]
    if not chain:
        raise RoutingError(f"no provider serves model {model!r}")
    return chain
