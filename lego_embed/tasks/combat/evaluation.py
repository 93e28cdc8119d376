"""Held-out evaluation of the combat task: agreement of the model's decisions with the expert
policy, and the share of its barks the corpus checker judges right."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from lego_embed.tasks.combat.line_check import LineChecker
from lego_embed.tasks.combat.lines import line_for
from lego_embed.tasks.combat.policy import ACTIONS, expert_action, random_situation
from lego_embed.tasks.combat.state import validate_state

HELDOUT_SEED = 20_261_121


@dataclass(frozen=True)
class Agreement:
    """agreement: share of held-out states where the model chose the expert's action."""

    agreement: float
    states: int


def heldout_situations(count: int, seed: int = HELDOUT_SEED) -> list[dict]:
    """Combat states never used in training (the training script uses other seeds)."""
    rng = random.Random(seed)
    return [random_situation(rng) for _ in range(count)]


def expert_agreement(decide: Callable[[dict, tuple[str, ...]], str], count: int) -> Agreement:
    """Runs `decide(state, ACTIONS) -> action` on `count` held-out states."""
    situations = heldout_situations(count)
    hits = sum(
        decide(situation, ACTIONS) == expert_action(validate_state(situation))
        for situation in situations
    )
    return Agreement(agreement=hits / count, states=count)


@dataclass(frozen=True)
class LineQuality:
    """Barks on held-out states: right: share judged right for the persona and the action the
    model chose (by the corpus checker); exact: share that are also the line written for the
    situation; action_agreement: share of those actions equal to the expert's."""

    right: float
    exact: float
    action_agreement: float
    states: int


def line_quality(speak: Callable[[dict, tuple[str, ...]], tuple[str | None, str | None]],
                 count: int, seed: int = HELDOUT_SEED) -> LineQuality:
    """Runs `speak(state, ACTIONS) -> (action, line)` on `count` held-out states."""
    checker = LineChecker()
    right = exact = agree = 0
    for situation in heldout_situations(count, seed):
        state = validate_state(situation)
        action, line = speak(situation, ACTIONS)
        agree += action == expert_action(state)
        if action is None or line is None:
            continue
        verdict = checker.judge(state.persona, action, line, line_for(state, action))
        right += verdict.right
        exact += verdict.exact
    return LineQuality(right / count, exact / count, agree / count, count)
