"""Evaluation: batched decisions equal the NPC decider's, perplexity is the plain definition,
method plans skip what they claim, and the loss-reduction arithmetic."""

from __future__ import annotations

import math
import random

import pytest
import torch
from skip_helpers import NUM_LAYERS, random_bundle, task_batches

from lego_embed.cli.skip_commands import task_sequences
from lego_embed.model.layer_plan import AdaptorStep
from lego_embed.npc.actions import ActionTrie, ConstrainedActionSampler
from lego_embed.skip.calibration import make_batches
from lego_embed.skip.evaluate import LevelEvaluation, SkipEvaluation, method_plans, score_plan
from lego_embed.skip.similarity import compute_similarity
from lego_embed.skip.spans import lowest_influence_layers
from lego_embed.tasks.combat.decide import CombatDecider
from lego_embed.tasks.combat.policy import ACTIONS, random_situation

SPANS = [(4, 5), (2, 5)]


def test_agreement_equals_the_npc_deciders_decisions_at_every_level(tiny_loaded):
    bundle = random_bundle(tiny_loaded, SPANS)
    tokenizer = tiny_loaded.tokenizer
    rng = random.Random(21)
    situations = [random_situation(rng) for _ in range(24)]
    examples, experts = task_sequences(tokenizer, situations)
    batches = make_batches(examples, 10, tokenizer.pad_token_id)
    sampler = ConstrainedActionSampler(ActionTrie(tokenizer, ACTIONS, tokenizer.eos_token_id))
    decider = CombatDecider(tiny_loaded)
    agreements = set()
    for level in range(bundle.max_level + 1):
        plan = bundle.plan(level)
        decided = [decider.decide(s, ACTIONS, layer_plan=plan).action for s in situations]
        expected = sum(d == e for d, e in zip(decided, experts, strict=True)) / len(situations)
        score = score_plan(tiny_loaded.model, plan, batches, sampler)
        assert score.accuracy == expected
        assert score.decisions == len(situations)
        agreements.add(expected)
    # a random model agrees by chance; make sure this test can tell agreement from its absence
    assert 0.0 < max(agreements) < 1.0


def test_perplexity_is_exp_mean_next_token_cross_entropy(tiny_loaded):
    batches = task_batches(tiny_loaded.tokenizer, 6, seed=22, batch_size=4)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            for row in range(batch.input_ids.shape[0]):
                ids = batch.input_ids[row, batch.attention_mask[row].bool()][None]
                logits = tiny_loaded.model(input_ids=ids).logits[0, :-1]
                nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
                total += float(nll)
                count += ids.shape[1] - 1
    expected = math.exp(total / count)
    sampler = ConstrainedActionSampler(ActionTrie(tiny_loaded.tokenizer, ACTIONS,
                                                  tiny_loaded.tokenizer.eos_token_id))
    score = score_plan(tiny_loaded.model, None, batches, sampler)
    assert score.perplexity == pytest.approx(expected, rel=1e-5)
    assert score.tokens == count


def test_method_plans_skip_k_layers_each_their_own_way(tiny_loaded):
    bundle = random_bundle(tiny_loaded, SPANS)
    similarity = compute_similarity(tiny_loaded.model, task_batches(tiny_loaded.tokenizer, 8, 23))
    plans = method_plans(bundle, similarity, 2)
    assert plans["full"].skipped_layers == 0
    for method in ("plain_skip", "early_exit", "block_influence", "adaptor"):
        assert plans[method].skipped_layers == 4, method

    def replaced(plan):
        return sorted(i for s in plan.steps if isinstance(s, AdaptorStep)
                      for i in range(s.first_layer, s.last_layer + 1))

    assert replaced(plans["plain_skip"]) == [2, 3, 4, 5] == replaced(plans["adaptor"])
    assert replaced(plans["early_exit"]) == list(range(NUM_LAYERS - 4, NUM_LAYERS))
    assert replaced(plans["block_influence"]) == lowest_influence_layers(similarity, 4)
    adaptor_steps = [s for s in plans["adaptor"].steps if isinstance(s, AdaptorStep)]
    assert adaptor_steps[0].module is bundle.adaptors[2]
    plain_steps = [s for s in plans["plain_skip"].steps if isinstance(s, AdaptorStep)]
    assert isinstance(plain_steps[0].module, torch.nn.Identity)


def _level(k: int, full: float, plain: float, adaptor: float, ppl: tuple[float, float, float]):
    methods = {"full": full, "plain_skip": plain, "early_exit": plain, "block_influence": plain,
               "adaptor": adaptor}
    perplexities = {"full": ppl[0], "plain_skip": ppl[1], "early_exit": ppl[1],
                    "block_influence": ppl[1], "adaptor": ppl[2]}
    return LevelEvaluation(k, k, (1, k), (), methods, perplexities, 0.1 * k)


def test_loss_reduction_arithmetic():
    levels = [
        _level(2, 0.9, 0.5, 0.8, (2.0, 4.0, 2.5)),   # accuracy: 1 - 0.1/0.4 = 0.75
        _level(4, 0.9, 0.7, 0.9, (2.0, 3.0, 2.0)),   # 1.0
        _level(6, 0.9, 0.1, 0.2, (2.0, 9.0, 8.0)),   # more than a quarter of 16: not averaged
    ]
    evaluation = SkipEvaluation("m", 16, 100, 1000, levels)
    assert levels[0].accuracy_loss_reduction() == pytest.approx(0.75)
    assert evaluation.loss_reduction_vs_plain_skip() == pytest.approx(0.875)
    assert levels[0].perplexity_loss_reduction() == pytest.approx(0.75)
    assert evaluation.perplexity_loss_reduction_vs_plain_skip() == pytest.approx(0.875)
    report = evaluation.to_json()
    assert report["loss_reduction_levels"] == [2, 4]
    assert set(report["levels"][0]) >= {"skipped_layers", "span", "accuracy", "perplexity",
                                        "cost_saving"}


def test_a_level_where_plain_skipping_loses_nothing_is_left_out_of_the_average():
    levels = [_level(2, 0.9, 0.9, 0.9, (2.0, 2.1, 2.0)), _level(4, 0.9, 0.5, 0.7, (2, 4, 3))]
    evaluation = SkipEvaluation("m", 16, 100, 1000, levels)
    assert levels[0].accuracy_loss_reduction() is None
    assert evaluation.loss_reduction_vs_plain_skip() == pytest.approx(0.5)
    only = SkipEvaluation("m", 16, 100, 1000, levels[:1])
    assert only.loss_reduction_vs_plain_skip() is None
    assert only.perplexity_loss_reduction_vs_plain_skip() == pytest.approx(1.0)
