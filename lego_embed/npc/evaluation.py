"""Held-out agreement of a model's decisions with the expert policy of the combat task."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from lego_embed.npc.combat_task import ACTIONS, expert_action, random_situation
from lego_embed.npc.state import validate_state

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
