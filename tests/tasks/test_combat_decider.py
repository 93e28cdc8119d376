"""Decisions through the real executor on a tiny random Llama, and the combat task's expert."""

from __future__ import annotations

import random

import pytest

from lego_embed.errors import InvalidActionSetError, InvalidGameStateError
from lego_embed.model.loading import load_model
from lego_embed.tasks.combat.decide import CombatDecider, prepare_decision
from lego_embed.tasks.combat.evaluation import expert_agreement, heldout_situations
from lego_embed.tasks.combat.policy import (
    ACTIONS,
    LABEL_NOISE,
    SAMPLE_SITUATIONS,
    expert_action,
    noisy_expert_action,
    random_situation,
)
from lego_embed.tasks.combat.state import validate_state


@pytest.fixture(scope="module")
def decider(tiny_npc_model_dir):
    return CombatDecider(load_model(tiny_npc_model_dir))


def test_decisions_are_allowed_actions(decider):
    allowed = ("block", "dodge", "call for help")
    for _, state in SAMPLE_SITUATIONS:
        decision = decider.decide(state, allowed)
        assert decision.action in allowed
        assert decision.generated_tokens >= 1 and decision.subtasks > 0
        assert 0 < decision.compute_ms <= decision.latency_ms


def test_decision_equals_scoring_every_action_for_single_token_actions(decider):
    """With one-token actions, the constrained choice is the argmax of the next-token logits."""
    import torch

    loaded = decider.loaded
    allowed = ("block", "dodge", "heal", "shoot")
    for _, state in SAMPLE_SITUATIONS:
        prepared = prepare_decision(loaded.tokenizer, state, allowed)
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([prepared.prompt_ids])).logits[0, -1]
        firsts = [loaded.tokenizer.encode(" " + a, add_special_tokens=False)[0] for a in allowed]
        expected = allowed[int(torch.argmax(logits[firsts]))]
        assert decider.decide(state, allowed).action == expected


def test_malformed_state_and_actions_are_typed_errors(decider):
    with pytest.raises(InvalidGameStateError, match="enemy_hp"):
        decider.decide({**SAMPLE_SITUATIONS[0][1], "enemy_hp": float("nan")}, ACTIONS)
    with pytest.raises(InvalidActionSetError):
        decider.decide(SAMPLE_SITUATIONS[0][1], [])


def test_static_part_is_the_persona_part_of_the_prompt(decider):
    prepared = prepare_decision(decider.loaded.tokenizer, SAMPLE_SITUATIONS[0][1], ACTIONS)
    static = prepared.encoded.static_tokens
    prefix = decider.loaded.tokenizer.decode(prepared.prompt_ids[:static])
    assert static > 1 and prefix.endswith("persona brute |")


def test_agreement_counts_expert_matches():
    first = heldout_situations(50)
    assert first == heldout_situations(50)
    oracle = expert_agreement(lambda s, a: expert_action(validate_state(s)), 50)
    assert oracle.agreement == 1.0 and oracle.states == 50
    constant = expert_agreement(lambda s, a: "block", 50)
    block_share = sum(expert_action(validate_state(s)) == "block" for s in first) / 50
    assert constant.agreement == pytest.approx(block_share)


def test_expert_rules_and_noise():
    rng = random.Random(3)
    states = [validate_state(random_situation(rng)) for _ in range(4000)]
    actions = {expert_action(s) for s in states}
    assert actions == set(ACTIONS)
    windup = validate_state({**SAMPLE_SITUATIONS[0][1], "persona": "duelist"})
    assert expert_action(windup) == "dodge"
    flips = sum(noisy_expert_action(s, rng) != expert_action(s) for s in states) / len(states)
    assert flips == pytest.approx(LABEL_NOISE, abs=0.015)
