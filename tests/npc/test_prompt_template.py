"""Prompt templates: checked when made, filled per request, errors that name the field."""

from __future__ import annotations

import pytest

from lego_embed.errors import PromptTemplateError
from lego_embed.npc.prompt_template import PromptTemplate


def test_fields_are_named_in_order_and_filled_with_format_specs() -> None:
    template = PromptTemplate("Guard {name} saw the player {last_seen:.1f} s ago at {place}. "
                              "{name} is {mood!r}; {{braces}} stay.")
    assert template.fields == ("name", "last_seen", "place", "mood")
    filled = template.fill({"name": "Ada", "last_seen": 3.14159, "place": "gate",
                            "mood": "wary"})
    assert filled.text == ("Guard Ada saw the player 3.1 s ago at gate. Ada is 'wary'; "
                           "{braces} stay.")
    assert filled.unused == ()


def test_unused_fields_are_reported_not_dropped_silently() -> None:
    filled = PromptTemplate("hp {hp}").fill({"hp": 30, "stamnia": 5, "alert": True})
    assert filled.text == "hp 30"
    assert filled.unused == ("alert", "stamnia")


def test_a_missing_field_is_an_error_naming_it() -> None:
    template = PromptTemplate("{hp} and {last_seen}")
    with pytest.raises(PromptTemplateError, match="field 'last_seen' is missing"):
        template.fill({"hp": 3})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hp {hp", "malformed"),
        ("hp }", "malformed"),
        ("hp {}", "unnamed field"),
        ("hp {0}", "unnamed field"),
        ("hp {state.hp}", "field 'state.hp'"),
        ("hp {hp[0]}", "field 'hp\\[0\\]'"),
        ("hp {hp:{width}}", "nested"),
        ("hp {hp!a}", "conversion"),
    ],
)
def test_malformed_templates_are_errors_when_made(text: str, message: str) -> None:
    with pytest.raises(PromptTemplateError, match=message):
        PromptTemplate(text)


def test_declared_fields_catch_a_template_field_the_game_never_sends() -> None:
    with pytest.raises(PromptTemplateError, match="field 'last_sen' of the prompt template is "
                                                  "unknown"):
        PromptTemplate("seen {last_sen}", declared=("hp", "last_seen"))
    template = PromptTemplate("hp {hp}", declared=("hp", "last_seen"))
    assert template.unused_declared == ("last_seen",)


def test_a_value_that_does_not_fit_its_format_names_the_field() -> None:
    with pytest.raises(PromptTemplateError, match="field 'hp'.*'.1f'"):
        PromptTemplate("{hp:.1f}").fill({"hp": "full"})
    with pytest.raises(PromptTemplateError, match="dictionary"):
        PromptTemplate("{hp}").fill([("hp", 1)])
