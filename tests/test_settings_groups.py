"""The settings come in groups (``settings.limits.tool_time_limit``) while the variables stay
flat (``AGENTFLEET_TOOL_TIME_LIMIT``); the reference in docs/configuration.md lists the groups."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from agentfleet.tasks.setting_groups import LimitSettings
from agentfleet.tasks.settings import ENV_PREFIX, FIELD_GROUPS, GROUPS, Settings, unknown_variables
from ops import config_reference


def test_every_variable_lands_in_its_group() -> None:
    s = Settings.from_environ(
        {
            "AGENTFLEET_TOOL_TIME_LIMIT": "70",
            "AGENTFLEET_KEY_PREFIX": "grp",
            "AGENTFLEET_LLM_MODEL": "sim-2",
            "AGENTFLEET_TOOL_MODULES": "a.b, c",
            "agentfleet_log_level": "debug",  # read in any case, as before
        }
    )
    assert s.limits.tool_time_limit == 70
    assert s.redis.key_prefix == "grp"
    assert s.llm.llm_model == "sim-2"
    assert s.workers.tool_modules == ["a.b", "c"]
    assert s.logs.log_level == "DEBUG"
    # Only what was given counts as set (the logs and the demo ask).
    assert s.limits.model_fields_set == {"tool_time_limit"}
    assert s.flower.model_fields_set == set()


def test_each_field_has_one_variable_and_one_group() -> None:
    fields = [name for model in GROUPS.values() for name in model.model_fields]
    assert sorted(fields) == sorted(FIELD_GROUPS)  # no name in two groups
    assert list(Settings.model_fields) == list(GROUPS)
    assert not set(FIELD_GROUPS) & set(GROUPS)
    environ = {ENV_PREFIX + name.upper(): "x" for name in FIELD_GROUPS}
    assert unknown_variables(environ) == []


def test_flat_names_and_groups_agree() -> None:
    flat = Settings(tool_time_limit=70, key_prefix="grp")
    grouped = Settings(limits=LimitSettings(tool_time_limit=70), redis={"key_prefix": "grp"})
    assert flat == grouped
    # A group given whole wins over a flat name for the same field; the others still apply.
    mixed = Settings(limits={"tool_time_limit": 80}, tool_time_limit=70, step_time_limit=130)
    assert (mixed.limits.tool_time_limit, mixed.limits.step_time_limit) == (80, 130)


def test_a_copy_takes_flat_names_into_their_groups() -> None:
    settings = Settings(llm_timeout=30)
    provider = settings.llm.provider_list[0]
    copied = settings.model_copy(update={"key_prefix": "cp", "llm_timeout": 40})
    assert copied.redis.key_prefix == "cp"
    assert copied.llm.provider_list[0].timeout == 40  # the default provider is made again
    assert (settings.redis.key_prefix, provider.timeout) == ("af", 30)


def test_a_misspelt_field_of_a_group_is_refused() -> None:
    with pytest.raises(ValidationError, match="tool_time_limt"):
        Settings(limits={"tool_time_limt": 70})
    with pytest.raises(ValidationError, match="extra"):
        LimitSettings(tool_time_limt=70)  # type: ignore[call-arg]


def test_groups_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        settings.limits.tool_time_limit = 5  # type: ignore[misc]


def test_checks_across_groups_keep_their_messages() -> None:
    with pytest.raises(ValidationError, match="need llm_timeout < step_soft_time_limit"):
        Settings.from_environ({"AGENTFLEET_LLM_TIMEOUT": "100"})
    with pytest.raises(ValidationError, match="visibility_timeout=200s is too short"):
        Settings(visibility_timeout=200)


def test_the_reference_lists_the_groups_of_the_model() -> None:
    document = config_reference.DOC.read_text()
    generated = document.split(config_reference.BEGIN, 1)[1].split(config_reference.END, 1)[0]
    listed = re.findall(r"^### .* \(`settings\.(\w+)`\)$", generated, re.MULTILINE)
    assert listed == list(Settings.model_fields)
    for group, model in GROUPS.items():
        table = generated.split(f"(`settings.{group}`)", 1)[1].split("\n### ", 1)[0]
        variables = re.findall(rf"^\| `{ENV_PREFIX}(\w+)` \|", table, re.MULTILINE)
        assert [v.lower() for v in variables] == list(model.model_fields), group
