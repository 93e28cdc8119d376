"""Running skip levels in our executor equals the oracle's plain implementation of the same skip:
the Hugging Face model's own forward with the plan's steps as its layer list and its own KV
cache, in which a skipped layer writes nothing. Also when the level changes mid-request."""

from __future__ import annotations

import pytest
import torch
from hf_oracle import hf_model, hf_plan_logits, hf_plan_run
from skip_helpers import NUM_LAYERS, RecordingGreedySampler, random_bundle, task_examples

from lego_embed.model.executor import Executor
from lego_embed.model.subtask import SubtaskKind
from lego_embed.skip.reference import plan_logits

pytestmark = pytest.mark.parity

SPANS = [(4, 5), (2, 5), (1, 2)]


def executor_run(executor: Executor, prompt: list[int], plans: list):
    """The same with the executor: set_layer_plan between passes (after each HEAD)."""
    sampler = RecordingGreedySampler(len(plans))
    state = executor.start(prompt, sampler, layer_plan=plans[0])
    for index, plan in enumerate(plans):
        if index > 0:
            executor.set_layer_plan(state, plan)
        while executor.step(state).subtask.kind is not SubtaskKind.HEAD:
            pass
    assert state.finished
    return state, torch.stack(sampler.logits)


def test_every_level_equals_the_reference(tiny_loaded):
    bundle = random_bundle(tiny_loaded, SPANS)
    oracle = hf_model(tiny_loaded.path)
    executor = Executor(tiny_loaded)
    examples, _ = task_examples(tiny_loaded.tokenizer, 3, seed=11)
    for example in examples:
        prompt = list(example.prompt_ids)
        for level in range(bundle.max_level + 1):
            plans = [bundle.plan(level)] * 4
            ref_tokens, ref_logits = hf_plan_run(oracle, prompt, plans)
            state, logits = executor_run(executor, prompt, plans)
            assert state.generated == ref_tokens
            torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
            # whole-sequence passes (no cache), ours and the oracle's, agree too
            sequence = torch.tensor([prompt + ref_tokens[:-1]])
            with torch.no_grad():
                whole = plan_logits(tiny_loaded.model, sequence, None, bundle.plan(level))
            oracle_whole = hf_plan_logits(oracle, sequence, bundle.plan(level))
            torch.testing.assert_close(whole[0, len(prompt) - 1 :], ref_logits, atol=1e-5, rtol=0)
            torch.testing.assert_close(whole, oracle_whole, atol=1e-5, rtol=0)


def test_levels_differ_from_each_other(tiny_loaded):
    bundle = random_bundle(tiny_loaded, SPANS)
    prompt = list(task_examples(tiny_loaded.tokenizer, 1, seed=12)[0][0].prompt_ids)
    with torch.no_grad():
        outs = [plan_logits(tiny_loaded.model, torch.tensor([prompt]), None, bundle.plan(level))
                for level in range(bundle.max_level + 1)]
    for a in range(len(outs)):
        for b in range(a + 1, len(outs)):
            assert (outs[a] - outs[b]).abs().max() > 1e-3


def test_level_switching_mid_request_equals_the_reference(tiny_loaded):
    bundle = random_bundle(tiny_loaded, SPANS)
    oracle = hf_model(tiny_loaded.path)
    executor = Executor(tiny_loaded)
    examples, _ = task_examples(tiny_loaded.tokenizer, 2, seed=13)
    schedules = [
        [1, 1, 2, 2, 2, 3],  # escalate: prefill at level 1, then a larger span
        [0, 0, 3, 3, 1, 0],  # escalate, switch to a disjoint span, back to the full model
        [2, 0, 1, 2, 0, 3],  # change at every decode step
    ]
    for example in examples:
        prompt = list(example.prompt_ids)
        for schedule in schedules:
            plans = [bundle.plan(level) for level in schedule]
            ref_tokens, ref_logits = hf_plan_run(oracle, prompt, plans)
            state, logits = executor_run(executor, prompt, plans)
            assert state.generated == ref_tokens
            torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)


def test_skipped_layers_keep_no_kv_for_the_positions_they_skipped(tiny_loaded):
    bundle = random_bundle(tiny_loaded, SPANS)
    executor = Executor(tiny_loaded)
    prompt = list(task_examples(tiny_loaded.tokenizer, 1, seed=14)[0][0].prompt_ids)
    schedule = [2, 2, 0, 0]  # level 2 skips layers 2..5 for the prompt and the first token
    state, _ = executor_run(executor, prompt, [bundle.plan(level) for level in schedule])
    prompt_positions = list(range(len(prompt)))
    for layer in range(NUM_LAYERS):
        positions = state.kv[layer].positions.tolist()
        if 2 <= layer <= 5:
            # ran only at decode passes 3 and 4 (their query positions), never for the prompt
            assert positions == [len(prompt) + 1, len(prompt) + 2]
        else:
            assert positions == prompt_positions + [len(prompt), len(prompt) + 1, len(prompt) + 2]
