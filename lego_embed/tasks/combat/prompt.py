"""Turns a GameState into the text prompt the NPC model reads.

The format is compact and word-separated so that a small tokenizer gives each value one token:
`persona brute | hp 34 | enemy_hp 80 | distance 3.5 | enemy_action heavy_windup | cd_dodge 0 |
cd_heal 0 | cd_heavy 3 | allies 2 | action`, answered by ` <action>` and end-of-sequence.
The persona comes first: it is the static part of an NPC's prompt (reusable prefix KV).
A bark follows the action after the output spec's separator (` block say <line>`); a line alone
(the game chose the action) is asked for with the prompt up to that separator (`line_prompt`).
"""

from __future__ import annotations

import math

from lego_embed.npc.output_spec import ANSWER_PREFIX, SAY_SEPARATOR
from lego_embed.npc.prompt_parts import Prompt
from lego_embed.tasks.combat.state import GameState

MAX_PROMPT_DISTANCE_M = 20.0
SEPARATOR = " | "


def _word(text: str) -> str:
    return "_".join(text.lower().split())


def quantize_distance(distance_m: float) -> float:
    """Distance as the prompt shows it: 0.5 m steps, capped at MAX_PROMPT_DISTANCE_M."""
    return min(round(distance_m * 2.0) / 2.0, MAX_PROMPT_DISTANCE_M)


def quantize_cooldown(seconds: float) -> int:
    """Cooldown as the prompt shows it: whole seconds, rounded up (0 only when ready)."""
    return math.ceil(seconds)


def persona_prefix(persona: str) -> str:
    """The static start of every prompt of an NPC with this persona (no trailing space, so
    that it tokenizes exactly as the start of the full prompt)."""
    return f"persona {_word(persona)}{SEPARATOR.rstrip()}"


def build_prompt(state: GameState) -> str:
    """The model's prompt for one decision; the answer follows ANSWER_PREFIX."""
    parts = [
        f"hp {round(state.hp)}",
        f"enemy_hp {round(state.enemy_hp)}",
        f"distance {quantize_distance(state.distance):.1f}",
        f"enemy_action {_word(state.enemy_last_action)}",
    ]
    parts += [
        f"cd_{_word(name)} {quantize_cooldown(seconds)}"
        for name, seconds in sorted(state.cooldowns.items())
    ]
    parts += [f"allies {state.allies}", "action"]
    return f"{persona_prefix(state.persona)} {SEPARATOR.join(parts)}"


def combat_prompt(state: GameState) -> Prompt:
    """`build_prompt` in two parts: the persona prefix (static) and the rest (dynamic)."""
    static = persona_prefix(state.persona)
    text = build_prompt(state)
    return Prompt(static, text[len(static):])


def line_prompt(state: GameState, action: str) -> Prompt:
    """The prompt for a bark alone: the situation, the action the game chose, the separator."""
    prompt = combat_prompt(state)
    return Prompt(prompt.static, f"{prompt.dynamic}{ANSWER_PREFIX}{action}{SAY_SEPARATOR}")
