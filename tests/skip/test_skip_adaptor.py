"""Adaptor shape, identity start, and distillation that really moves it towards the span."""

from __future__ import annotations

import pytest
import torch
from skip_helpers import task_batches

from lego_embed.npc.actions import ActionTrie, ConstrainedActionSampler
from lego_embed.skip.adaptor import AdaptorShape, SpanAdaptor
from lego_embed.skip.distill import (
    DistillConfig,
    default_adaptor_width,
    distill_adaptor,
    distill_spans,
    record_teacher,
)
from lego_embed.skip.evaluate import score_plan
from lego_embed.skip.reference import plan_logits, skip_plan
from lego_embed.skip.similarity import record_states
from lego_embed.skip.spans import Span
from lego_embed.tasks.combat.policy import ACTIONS


def test_adaptor_shapes_and_bytes():
    shape = AdaptorShape(hidden_size=64, intermediate_size=32, rms_norm_eps=1e-5)
    adaptor = SpanAdaptor(shape)
    assert adaptor.up.weight.shape == (32, 64)
    assert adaptor.down.weight.shape == (64, 32)
    assert adaptor.norm.weight.shape == (64,)
    assert shape.parameter_count == 64 + 2 * 64 * 32
    assert sum(p.numel() for p in adaptor.parameters()) == shape.parameter_count
    assert adaptor.weight_bytes == shape.parameter_count * 4
    assert adaptor.half().weight_bytes == shape.parameter_count * 2
    out = SpanAdaptor(shape)(torch.randn(3, 7, 64))
    assert out.shape == (3, 7, 64)
    with pytest.raises(ValueError):
        SpanAdaptor(AdaptorShape(64, 0))


def test_a_fresh_adaptor_is_the_identity():
    adaptor = SpanAdaptor(AdaptorShape(16, 8))
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(adaptor(x), x)


def test_distillation_beats_plain_skipping(tiny_loaded):
    model = tiny_loaded.model
    batches = task_batches(tiny_loaded.tokenizer, 48, seed=5, batch_size=16)
    span = Span(2, 3)
    config = DistillConfig(intermediate_size=48, mse_steps=150, kl_steps=6, seed=1)
    teacher = record_teacher(model, batches, [2, 4], log_prob_batches=3)
    model.layers[0].requires_grad_(True)  # distillation must leave every flag as it found it
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    result = distill_adaptor(model, teacher, span, config)
    assert result.adaptor.shape == AdaptorShape(64, 48, 1e-5)
    assert result.unexplained_after_mse < 0.9  # plain skip is 1.0 by definition
    assert result.unexplained_final < 0.9
    assert result.final_kl is not None and result.final_kl >= 0.0
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    model.requires_grad_(False)
    heldout = task_batches(tiny_loaded.tokenizer, 16, seed=6, batch_size=16)
    sampler = ConstrainedActionSampler(ActionTrie(tiny_loaded.tokenizer, ACTIONS,
                                                  tiny_loaded.tokenizer.eos_token_id))
    plain = score_plan(model, skip_plan(6, span.layers()), heldout, sampler).perplexity
    adapted = score_plan(model, skip_plan(6, span.layers(), result.adaptor), heldout, sampler)
    assert adapted.perplexity < plain


def test_distill_spans_shares_one_recording_and_keeps_order(tiny_loaded):
    batches = task_batches(tiny_loaded.tokenizer, 16, seed=7, batch_size=16)
    spans = [Span(4, 5), Span(1, 3)]
    seen = []
    results, teacher = distill_spans(tiny_loaded.model, batches, spans,
                                     DistillConfig(mse_steps=20, kl_steps=0), on_done=seen.append)
    assert [r.span for r in results] == spans == [r.span for r in seen]
    assert all(r.final_kl is None for r in results)
    assert sorted(teacher.states) == [1, 4, 6] and teacher.log_probs == []
    with pytest.raises(ValueError, match="layers 1..5"):
        distill_adaptor(tiny_loaded.model, teacher, Span(0, 1), DistillConfig(mse_steps=1))
    with pytest.raises(ValueError, match="lacks states"):
        distill_adaptor(tiny_loaded.model, teacher, Span(2, 3), DistillConfig(mse_steps=1))


def test_teacher_record_holds_the_full_models_states_and_log_probs(tiny_loaded):
    batches = task_batches(tiny_loaded.tokenizer, 10, seed=8, batch_size=4)
    teacher = record_teacher(tiny_loaded.model, batches, [0, 3], log_prob_batches=2)
    assert len(teacher.log_probs) == 2 and len(teacher.states[3]) == 3
    states = record_states(tiny_loaded.model, batches[1], [3])
    torch.testing.assert_close(teacher.states[3][1][batches[1].attention_mask.bool()], states[3])
    logits = plan_logits(tiny_loaded.model, batches[0].input_ids, batches[0].attention_mask, None)
    torch.testing.assert_close(teacher.log_probs[0], torch.log_softmax(logits, -1))
    assert teacher.real_tokens(0).shape[0] == sum(b.real_tokens for b in batches)


def test_default_width_grows_with_the_span_between_1x_and_4x():
    assert [default_adaptor_width(128, k) for k in (1, 2, 4, 6, 8, 12)] == [
        128, 128, 256, 384, 512, 512]
