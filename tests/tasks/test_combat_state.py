"""Game-state validation: every malformed state names the field that is wrong."""

from __future__ import annotations

import math

import pytest

from lego_embed.errors import InvalidGameStateError
from lego_embed.tasks.combat.policy import SAMPLE_SITUATIONS
from lego_embed.tasks.combat.prompt import build_prompt
from lego_embed.tasks.combat.state import FIELDS, validate_state

GOOD = SAMPLE_SITUATIONS[0][1]


def test_valid_state_round_trips():
    state = validate_state(GOOD)
    assert state.persona == "brute" and state.hp == 70.0 and state.allies == 1
    assert state.cooldowns == {"dodge": 0.0, "heal": 0.0, "heavy": 0.0}


@pytest.mark.parametrize("field", FIELDS)
def test_missing_field_is_named(field):
    broken = {k: v for k, v in GOOD.items() if k != field}
    with pytest.raises(InvalidGameStateError, match=f"'{field}'.*missing"):
        validate_state(broken)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("hp", "70", "expected a number"),
        ("hp", True, "expected a number"),
        ("hp", math.nan, "finite"),
        ("enemy_hp", 150, "outside"),
        ("distance", -1.0, "outside"),
        ("distance", math.inf, "finite"),
        ("persona", "", "non-empty string"),
        ("enemy_last_action", 3, "non-empty string"),
        ("allies", 1.5, "whole number"),
        ("allies", -2, ">= 0"),
        ("cooldowns", [1, 2], "dict"),
    ],
)
def test_bad_value_is_named(field, value, problem):
    with pytest.raises(InvalidGameStateError, match=problem) as raised:
        validate_state({**GOOD, field: value})
    assert raised.value.field == field


def test_bad_cooldown_names_the_ability():
    with pytest.raises(InvalidGameStateError) as raised:
        validate_state({**GOOD, "cooldowns": {"heal": math.nan}})
    assert raised.value.field == "cooldowns.heal"


def test_not_a_dict():
    with pytest.raises(InvalidGameStateError, match="expected a dict"):
        validate_state(["hp", 3])


def test_prompt_shows_quantized_values_with_persona_first():
    prompt = build_prompt(validate_state({**GOOD, "distance": 2.26, "hp": 69.6,
                                          "cooldowns": {"heavy": 0.2}}))
    assert prompt.startswith("persona brute | ")
    assert "hp 70 |" in prompt and "distance 2.5 |" in prompt and "cd_heavy 1 |" in prompt
    assert prompt.endswith("| action")
