"""The persona barks the bundled model speaks: a generated corpus of short combat lines.

A line is an opener that depends on how the fight is going (the mood: winning, even, losing)
followed by a phrase that depends on the action and on whether allies are near. Every opener
and phrase belongs to one persona, so no two personas share a line. `line_for` is the line a
persona says for a situation and the action it chose; `corpus()` lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from lego_embed.tasks.combat.policy import ACTIONS, PERSONAS
from lego_embed.tasks.combat.state import GameState

MOODS = ("winning", "even", "losing")
WINNING_ENEMY_HP = 25
LOSING_HP = 30
HP_GAP = 30

OPENERS: dict[str, dict[str, str]] = {
    "brute": {"winning": "Hah, too easy!", "even": "Grr, stand still!",
              "losing": "Argh, that stings!"},
    "duelist": {"winning": "Touché, my friend.", "even": "En garde.",
                "losing": "A mere scratch, nothing more."},
    "coward": {"winning": "Wait, am I winning?", "even": "Please just go away!",
               "losing": "Oh no, oh no!"},
    "tactician": {"winning": "As calculated.", "even": "Hold the line.",
                  "losing": "Adjusting the plan."},
}

# persona -> action -> (phrase when alone, phrase with allies near)
PHRASES: dict[str, dict[str, tuple[str, str]]] = {
    "brute": {
        "light attack": ("Take a quick one!", "Quick jab, lads!"),
        "heavy attack": ("I'll crush you flat!", "Watch me smash this one, lads!"),
        "block": ("Hit my shield, weakling!", "Shields up, boys!"),
        "dodge": ("Missed me, slowpoke!", "Too slow for us!"),
        "heal": ("Meat and ale, back to full!", "Cover me, I need a swig!"),
        "approach": ("Come here, little worm!", "Charge with me, boys!"),
        "retreat": ("Fine, I'll be back!", "Fall back, boys!"),
        "shoot": ("Catch this rock!", "Throw everything, boys!"),
        "call for help": ("Oi, somebody get over here!", "More fists over here!"),
    },
    "duelist": {
        "light attack": ("A swift riposte!", "A swift riposte, comrades!"),
        "heavy attack": ("Behold, a grand lunge!", "Witness my grand lunge, comrades!"),
        "block": ("Parried with grace.", "Parry and hold, comrades."),
        "dodge": ("Too graceful to touch.", "A graceful step aside, comrades."),
        "heal": ("A moment to mend my wounds.", "Cover me while I mend, comrades."),
        "approach": ("Let us cross blades.", "Advance with me, comrades."),
        "retreat": ("A tactical bow, farewell.", "We withdraw with honour, comrades."),
        "shoot": ("A dagger, thrown with flair!", "Daggers in unison, comrades!"),
        "call for help": ("My seconds, to my side!", "Comrades, join the duel!"),
    },
    "coward": {
        "light attack": ("Um, poke?", "I poke, you guys hit harder!"),
        "heavy attack": ("Eek, big swing!", "Okay okay, big swing, cover me!"),
        "block": ("Don't hurt me, please!", "Hiding behind you guys!"),
        "dodge": ("Whoa, that was close!", "Somebody else take the hits!"),
        "heal": ("Bandages, where are my bandages?", "Keep it busy, I'm patching up!"),
        "approach": ("Do I really have to go closer?", "Fine, I'll go, but you first!"),
        "retreat": ("Nope, nope, I'm out!", "You guys handle it, bye!"),
        "shoot": ("From way back here, it counts!", "Shooting from behind you guys!"),
        "call for help": ("Help, anyone, help!", "Guys, I need you right now!"),
    },
    "tactician": {
        "light attack": ("Probing strike.", "Squad, probe its guard."),
        "heavy attack": ("Committing to the heavy blow.", "Squad, commit to the heavy blow."),
        "block": ("Guard raised, absorbing it.", "Squad, lock shields."),
        "dodge": ("Sidestep and reposition.", "Squad, scatter and reposition."),
        "heal": ("Recovering, then resuming.", "Squad, screen me while I recover."),
        "approach": ("Closing the distance.", "Squad, close the distance."),
        "retreat": ("Withdrawing to a better position.", "Squad, withdraw in order."),
        "shoot": ("Ranged fire, now.", "Squad, ranged volley."),
        "call for help": ("Requesting support.", "Squad, requesting reinforcements."),
    },
}


@dataclass(frozen=True)
class CorpusLine:
    """One line of the corpus and what it was written for."""

    persona: str
    action: str
    mood: str
    with_allies: bool
    text: str


def mood(hp: float, enemy_hp: float) -> str:
    """How the fight is going for the NPC (HP in percent): losing when it is low or far behind,
    winning when the enemy is nearly dead or far behind, even otherwise."""
    if hp <= LOSING_HP or enemy_hp - hp >= HP_GAP:
        return "losing"
    if enemy_hp <= WINNING_ENEMY_HP or hp - enemy_hp >= HP_GAP:
        return "winning"
    return "even"


def compose(persona: str, action: str, fight_mood: str, with_allies: bool) -> str:
    return f"{OPENERS[persona][fight_mood]} {PHRASES[persona][action][int(with_allies)]}"


def line_for(state: GameState, action: str) -> str:
    """The line the state's persona says while doing `action`."""
    return compose(state.persona, action, mood(state.hp, state.enemy_hp), state.allies > 0)


def corpus() -> list[CorpusLine]:
    """Every line: 4 personas x 9 actions x 3 moods x alone / with allies."""
    return [
        CorpusLine(persona, action, fight_mood, with_allies,
                   compose(persona, action, fight_mood, with_allies))
        for persona in PERSONAS
        for action in ACTIONS
        for fight_mood in MOODS
        for with_allies in (False, True)
    ]
