"""The combat task's persona barks: the corpus, its checker, and the requests the task builds."""

from __future__ import annotations

import pytest

from lego_embed.errors import InvalidGameStateError
from lego_embed.npc.output_spec import Choice, ChoiceThenLine, Line
from lego_embed.tasks.combat.line_check import LineChecker
from lego_embed.tasks.combat.lines import MOODS, corpus, line_for, mood
from lego_embed.tasks.combat.policy import ACTIONS, PERSONAS, SAMPLE_SITUATIONS
from lego_embed.tasks.combat.prompt import build_prompt
from lego_embed.tasks.combat.request import combat_request, state_warnings
from lego_embed.tasks.combat.state import validate_state

STATE = SAMPLE_SITUATIONS[0][1]


def test_every_persona_action_mood_has_its_own_line_and_no_two_personas_share_one() -> None:
    lines = corpus()
    assert len(lines) == len(PERSONAS) * len(ACTIONS) * len(MOODS) * 2
    assert len({line.text for line in lines}) == len(lines)
    words_of = {p: {w for line in lines if line.persona == p for w in line.text.split()}
                for p in PERSONAS}
    for persona in PERSONAS:  # persona-specific: each voice has words no other persona uses
        others = set().union(*(words_of[p] for p in PERSONAS if p != persona))
        assert words_of[persona] - others


def test_the_line_follows_the_situation_and_the_action() -> None:
    state = validate_state(STATE)
    assert line_for(state, "block") != line_for(state, "heal")
    losing = validate_state({**STATE, "hp": 10})
    assert mood(losing.hp, losing.enemy_hp) == "losing"
    assert line_for(losing, "block") != line_for(state, "block")
    alone = validate_state({**STATE, "allies": 0})
    assert line_for(alone, "block") != line_for(state, "block")


def test_the_checker_judges_persona_and_action() -> None:
    checker = LineChecker()
    state = validate_state(STATE)
    line = line_for(state, "block")
    assert checker.judge("brute", "block", f"  {line} ", line).exact
    other_mood = line_for(validate_state({**STATE, "hp": 10}), "block")
    verdict = checker.judge("brute", "block", other_mood, line)
    assert verdict.right and not verdict.exact
    assert not checker.judge("duelist", "block", line, line).right  # another persona's line
    assert not checker.judge("brute", "heal", line, line).right  # another action's line
    garbled = checker.judge("brute", "block", line[:-3], line)
    assert not garbled.right and not garbled.known


def test_combat_requests_use_the_generic_api() -> None:
    choice = combat_request("npc", STATE, ACTIONS, 300.0)
    assert isinstance(choice.output, Choice)
    assert choice.prompt.static + choice.prompt.dynamic == build_prompt(validate_state(STATE))
    spoken = combat_request("npc", STATE, ACTIONS, 300.0, output="choice_then_line")
    assert isinstance(spoken.output, ChoiceThenLine)
    line = combat_request("npc", STATE, ACTIONS, 300.0, output="line", say_for="block")
    assert isinstance(line.output, Line)
    assert line.prompt.dynamic.endswith(" | action block say")
    with pytest.raises(InvalidGameStateError, match="say_for"):
        combat_request("npc", STATE, ACTIONS, 300.0, output="line")
    with pytest.raises(InvalidGameStateError, match="output"):
        combat_request("npc", STATE, ACTIONS, 300.0, output="poem")


def test_unused_fields_and_an_untrained_persona_are_reported() -> None:
    assert state_warnings(STATE) == ()
    warnings = state_warnings({**STATE, "persona": "guard", "stamina": 3})
    assert len(warnings) == 2
    assert "'stamina' is not used" in warnings[0]
    assert "persona 'guard' was never trained" in warnings[1] and "brute" in warnings[1]
    request = combat_request("npc", {**STATE, "stamina": 3}, ACTIONS, 300.0)
    assert request.warnings == state_warnings({**STATE, "stamina": 3})
