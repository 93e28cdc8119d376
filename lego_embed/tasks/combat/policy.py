"""The bundled NPC model's task: combat situations and the expert policy that labels them.

The expert is a rule set with persona-specific thresholds (heal when low, block or dodge a
telegraphed heavy attack, close distance when far, shoot from range, finish a weak enemy...).
`expert_action` is its deterministic choice; `noisy_expert_action` adds the randomness of a
human-like teacher (a plausible alternative some of the time) and is what training data uses.
Agreement is always measured against `expert_action`.
"""

from __future__ import annotations

import random

from lego_embed.tasks.combat.prompt import quantize_distance
from lego_embed.tasks.combat.state import GameState

PERSONAS = ("brute", "duelist", "coward", "tactician")
ENEMY_ACTIONS = (
    "idle", "light_attack", "heavy_windup", "heavy_attack", "block",
    "dodge", "heal", "shoot", "approach", "retreat",
)
ACTIONS = (
    "light attack", "heavy attack", "block", "dodge", "heal",
    "approach", "retreat", "shoot", "call for help",
)
COOLDOWN_ABILITIES = ("dodge", "heal", "heavy")

MELEE_RANGE_M = 2.5
WINDUP_REACH_M = 3.0
MAX_SHOOT_RANGE_M = 15.0
HEAL_BELOW_HP = {"brute": 25, "duelist": 35, "coward": 50, "tactician": 40}
FLEE_BELOW_HP = {"brute": 0, "duelist": 15, "coward": 30, "tactician": 20}
SHOOT_FROM_M = {"coward": 4.0, "tactician": 6.0}
FINISH_BELOW_HP = 20
ENEMY_ATTACKS = ("light_attack", "heavy_attack")
LABEL_NOISE = 0.05


def random_situation(rng: random.Random) -> dict:
    """A combat state dict as a game would send it, on the grid the prompt shows."""
    far = rng.random() < 0.35
    distance = rng.uniform(MELEE_RANGE_M, 20.0) if far else rng.uniform(0.0, 4.0)
    return {
        "persona": rng.choice(PERSONAS),
        "hp": rng.randint(1, 100),
        "enemy_hp": rng.randint(1, 100),
        "distance": quantize_distance(distance),
        "enemy_last_action": rng.choice(ENEMY_ACTIONS),
        "cooldowns": {
            ability: (0 if rng.random() < 0.6 else rng.randint(1, 5))
            for ability in COOLDOWN_ABILITIES
        },
        "allies": rng.choice((0, 0, 1, 2, 3)),
    }


def _ready(state: GameState, ability: str) -> bool:
    return state.cooldowns.get(ability, 0.0) <= 0.0


def _strike(state: GameState) -> str:
    return "heavy attack" if _ready(state, "heavy") else "light attack"


def _melee(state: GameState) -> str:
    persona, enemy = state.persona, state.enemy_last_action
    if enemy == "block" or state.enemy_hp <= FINISH_BELOW_HP:
        return _strike(state)
    if persona == "brute":
        return _strike(state)
    if persona == "duelist":
        return "block" if enemy in ENEMY_ATTACKS else "light attack"
    if persona == "coward":
        return "light attack" if state.allies >= 2 else "block"
    if state.hp > state.enemy_hp:
        return _strike(state)
    return "block" if enemy in ENEMY_ATTACKS else "light attack"


def expert_action(state: GameState) -> str:
    """The expert's deterministic choice among ACTIONS for a (validated) state."""
    persona = state.persona
    if state.hp < HEAL_BELOW_HP.get(persona, 30) and _ready(state, "heal"):
        return "heal"
    if state.hp < FLEE_BELOW_HP.get(persona, 0):
        if state.allies == 0 and persona in ("coward", "tactician"):
            return "call for help"
        return "retreat"
    if state.enemy_last_action == "heavy_windup" and state.distance <= WINDUP_REACH_M:
        if persona == "brute":
            return "heavy attack" if _ready(state, "heavy") else "block"
        return "dodge" if _ready(state, "dodge") else "block"
    if state.distance > MELEE_RANGE_M:
        shoot_from = SHOOT_FROM_M.get(persona)
        if shoot_from is not None and shoot_from <= state.distance <= MAX_SHOOT_RANGE_M:
            return "shoot"
        return "approach"
    return _melee(state)


_ALTERNATIVES = {
    "heal": "retreat", "retreat": "block", "call for help": "retreat", "dodge": "block",
    "block": "dodge", "heavy attack": "light attack", "light attack": "heavy attack",
    "approach": "shoot", "shoot": "approach",
}


def noisy_expert_action(state: GameState, rng: random.Random) -> str:
    """The expert's choice, replaced by a plausible alternative with probability LABEL_NOISE."""
    action = expert_action(state)
    return _ALTERNATIVES[action] if rng.random() < LABEL_NOISE else action

SAMPLE_SITUATIONS = (
    ("brute, enemy winding up a heavy blow", {
        "persona": "brute", "hp": 70, "enemy_hp": 60, "distance": 2.0,
        "enemy_last_action": "heavy_windup", "cooldowns": {"dodge": 0, "heal": 0, "heavy": 0},
        "allies": 1}),
    ("duelist, low on health, heal ready", {
        "persona": "duelist", "hp": 22, "enemy_hp": 80, "distance": 1.5,
        "enemy_last_action": "light_attack", "cooldowns": {"dodge": 0, "heal": 0, "heavy": 2},
        "allies": 0}),
    ("coward, far away, enemy approaching", {
        "persona": "coward", "hp": 90, "enemy_hp": 95, "distance": 9.0,
        "enemy_last_action": "approach", "cooldowns": {"dodge": 0, "heal": 3, "heavy": 0},
        "allies": 0}),
    ("tactician, enemy nearly dead, heavy on cooldown", {
        "persona": "tactician", "hp": 55, "enemy_hp": 12, "distance": 1.0,
        "enemy_last_action": "block", "cooldowns": {"dodge": 2, "heal": 0, "heavy": 4},
        "allies": 2}),
    ("tactician, badly hurt, alone, heal on cooldown", {
        "persona": "tactician", "hp": 14, "enemy_hp": 70, "distance": 3.5,
        "enemy_last_action": "shoot", "cooldowns": {"dodge": 0, "heal": 5, "heavy": 0},
        "allies": 0}),
    ("brute, enemy out of reach", {
        "persona": "brute", "hp": 80, "enemy_hp": 50, "distance": 14.0,
        "enemy_last_action": "retreat", "cooldowns": {"dodge": 0, "heal": 0, "heavy": 0},
        "allies": 3}),
)
