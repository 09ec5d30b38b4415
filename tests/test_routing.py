"""Resolving a run's model or provider list into its fallback chain."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentfleet.tasks.llm import RoutingError, Target, resolve_chain
from agentfleet.tasks.setting_groups import ProviderConfig
from agentfleet.tasks.settings import Settings

PROVIDERS = [
    ProviderConfig(name="fast", base_url="http://f/v1", priority=2, models=("m1", "m2")),
    ProviderConfig(name="main", base_url="http://m/v1", priority=1, default_model="big"),
    ProviderConfig(name="spare", base_url="http://s/v1", priority=3, models=("m2",)),
]
SETTINGS = Settings(providers=PROVIDERS, model_aliases={"cheap": ["spare:m2", "fast:m1"]})


def test_default_chain_is_every_provider_by_priority() -> None:
    assert resolve_chain(SETTINGS, None) == [
        Target("main", "big"),
        Target("fast", "m1"),
        Target("spare", "m2"),
    ]


def test_plain_model_goes_to_providers_serving_it() -> None:
    assert resolve_chain(SETTINGS, "m2") == [
        Target("main", "m2"),  # serves any model
        Target("fast", "m2"),
        Target("spare", "m2"),
    ]


def test_alias_and_pinned_provider_and_explicit_chain() -> None:
    assert resolve_chain(SETTINGS, "cheap") == [Target("spare", "m2"), Target("fast", "m1")]
    assert resolve_chain(SETTINGS, "fast:m2") == [Target("fast", "m2")]
    assert resolve_chain(SETTINGS, None, ["spare", "main"]) == [
        Target("spare", "m2"),
        Target("main", "big"),
    ]


@pytest.mark.parametrize(
    ("model", "providers", "says"),
    [
        (None, ["nope"], "unknown providers: nope"),
        ("m1", ["spare"], "do not serve these models: spare:m1"),
        ("fast:zzz", None, "does not serve model 'zzz'"),
    ],
)
def test_impossible_chains_are_refused(
    model: str | None, providers: list[str] | None, says: str
) -> None:
    with pytest.raises(RoutingError, match=says):
        resolve_chain(SETTINGS, model, providers)


def test_aliases_must_name_configured_providers() -> None:
    with pytest.raises(ValidationError, match="is not 'provider:model'"):
        Settings(providers=PROVIDERS, model_aliases={"x": ["ghost:m1"]})
    with pytest.raises(ValidationError, match="must be below step_soft_time_limit"):
        Settings(providers=[ProviderConfig(name="slow", base_url="http://x", timeout=100)])


def test_unknown_provider_prefix_is_refused_and_colon_models_still_resolve() -> None:
    settings = Settings(
        providers=[
            ProviderConfig(name="local", base_url="http://l/v1", priority=1, models=("llama3:8b",)),
            ProviderConfig(name="any", base_url="http://a/v1", priority=2),
        ]
    )
    with pytest.raises(RoutingError, match="no provider named 'nosuchprovider'"):
        resolve_chain(settings, "nosuchprovider:m")
    # A model that names no provider but is listed by one is a model name with a colon.
    assert resolve_chain(settings, "llama3:8b") == [
        Target("local", "llama3:8b"),
        Target("any", "llama3:8b"),
    ]
    assert resolve_chain(settings, "any:qwen2:7b") == [Target("any", "qwen2:7b")]
