"""The bundled NPC model: shape limits and held-out agreement with the expert policy."""

from __future__ import annotations

import pytest

from lego_embed.model.loading import load_model, resolve_model_path
from lego_embed.tasks.combat.decide import CombatDecider
from lego_embed.tasks.combat.evaluation import expert_agreement, heldout_situations

MAX_WEIGHT_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module")
def bundled():
    return load_model("bundled")


def test_bundled_model_shape(bundled):
    assert bundled.family == "llama"
    assert bundled.num_layers >= 16
    weights = resolve_model_path("bundled") / "model.safetensors"
    assert weights.stat().st_size <= MAX_WEIGHT_BYTES
    assert (resolve_model_path("bundled") / "MODEL_CARD.md").is_file()


def test_bundled_model_agrees_with_the_expert(bundled):
    decider = CombatDecider(bundled)
    result = expert_agreement(lambda state, actions: decider.decide(state, actions).action, 200)
    assert result.agreement >= 0.9


def test_bundled_model_respects_a_restricted_action_set(bundled):
    decider = CombatDecider(bundled)
    allowed = ("block", "retreat")
    chosen = {decider.decide(state, allowed).action for state in heldout_situations(30)}
    assert chosen <= set(allowed)
