"""The game state an NPC decides on: validation of the dict a game sends."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lego_embed.errors import InvalidGameStateError

MAX_HP = 100.0


@dataclass(frozen=True)
class GameState:
    """One NPC's view of a combat situation.

    hp, enemy_hp: health in percent (0-100). distance: metres to the enemy (>= 0).
    enemy_last_action: what the enemy did last (free text, e.g. "heavy_windup").
    cooldowns: seconds until each ability is ready again (0 = ready), by ability name.
    allies: number of friendly NPCs near this one. persona: the NPC's character, e.g. "brute".
    """

    persona: str
    hp: float
    enemy_hp: float
    distance: float
    enemy_last_action: str
    cooldowns: dict[str, float]
    allies: int


def _number(state: Mapping[str, Any], field: str, low: float, high: float) -> float:
    return _check_number(_present(state, field), field, low, high)


def _check_number(value: Any, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = type(value).__name__
        raise InvalidGameStateError(field, f"expected a number, got {kind} {value!r}")
    if not math.isfinite(value):
        raise InvalidGameStateError(field, f"expected a finite number, got {value!r}")
    if not low <= value <= high:
        raise InvalidGameStateError(field, f"{value!r} is outside [{low:g}, {high:g}]")
    return float(value)


def _text(state: Mapping[str, Any], field: str) -> str:
    value = _present(state, field)
    if not isinstance(value, str) or not value.strip():
        raise InvalidGameStateError(field, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _present(state: Mapping[str, Any], field: str) -> Any:
    if field not in state:
        raise InvalidGameStateError(field, "missing; every state needs " + ", ".join(FIELDS))
    return state[field]


def _cooldowns(state: Mapping[str, Any]) -> dict[str, float]:
    value = _present(state, "cooldowns")
    if not isinstance(value, Mapping):
        raise InvalidGameStateError(
            "cooldowns", f"expected a dict of ability -> seconds, got {type(value).__name__}"
        )
    cooldowns = {}
    for name, seconds in value.items():
        if not isinstance(name, str) or not name:
            raise InvalidGameStateError("cooldowns", f"ability names must be strings, got {name!r}")
        cooldowns[name] = _check_number(seconds, f"cooldowns.{name}", 0.0, math.inf)
    return cooldowns


def _allies(state: Mapping[str, Any]) -> int:
    value = _present(state, "allies")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise InvalidGameStateError("allies", f"expected a whole number, got {value!r}")
    if value < 0:
        raise InvalidGameStateError("allies", f"expected >= 0, got {value!r}")
    return int(value)


FIELDS = ("persona", "hp", "enemy_hp", "distance", "enemy_last_action", "cooldowns", "allies")


def validate_state(state: Mapping[str, Any]) -> GameState:
    """Checks a game's state dict and returns it typed.

    Raises InvalidGameStateError naming the first bad field.
    """
    if not isinstance(state, Mapping):
        raise InvalidGameStateError("<state>", f"expected a dict, got {type(state).__name__}")
    return GameState(
        persona=_text(state, "persona"),
        hp=_number(state, "hp", 0.0, MAX_HP),
        enemy_hp=_number(state, "enemy_hp", 0.0, MAX_HP),
        distance=_number(state, "distance", 0.0, math.inf),
        enemy_last_action=_text(state, "enemy_last_action"),
        cooldowns=_cooldowns(state),
        allies=_allies(state),
    )
