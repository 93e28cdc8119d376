"""Combat decisions and barks run to completion (the reference path: CLI, evaluation, tests)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lego_embed.model.loading import LoadedModel
from lego_embed.npc.decider import NpcAnswer, NpcDecider, PreparedRequest, prepare
from lego_embed.npc.output_spec import Choice, ChoiceThenLine
from lego_embed.tasks.combat.prompt import combat_prompt
from lego_embed.tasks.combat.request import LINE_MAX_TOKENS
from lego_embed.tasks.combat.state import validate_state


def prepare_decision(tokenizer: Any, state: Mapping[str, Any], actions: Sequence[str]
                     ) -> PreparedRequest:
    """A combat state and its allowed actions, checked and encoded (typed errors)."""
    return prepare(tokenizer, combat_prompt(validate_state(state)), Choice(actions))


class CombatDecider:
    """The combat task on an NpcDecider: `decide` picks an action, `speak` an action and the
    persona's bark."""

    def __init__(self, loaded: LoadedModel, decider: NpcDecider | None = None) -> None:
        self.loaded = loaded
        self.decider = decider or NpcDecider(loaded)
        self.executor = self.decider.executor

    def decide(self, state: Mapping[str, Any], actions: Sequence[str],
               layer_plan: Any = None) -> NpcAnswer:
        return self.decider.answer(combat_prompt(validate_state(state)), Choice(actions),
                                   layer_plan)

    def speak(self, state: Mapping[str, Any], actions: Sequence[str],
              layer_plan: Any = None, max_tokens: int = LINE_MAX_TOKENS) -> NpcAnswer:
        return self.decider.answer(combat_prompt(validate_state(state)),
                                   ChoiceThenLine(actions, max_tokens), layer_plan)
