"""Batched decode and prefill steps and the prefix cache give the same results as plain single
requests, and as the transformers oracle running the same plans."""

from __future__ import annotations

import pytest
import torch
from hf_oracle import hf_model, hf_plan_run
from model_helpers import RecordingSampler, random_prompt, run_greedy, save_tiny_model

from lego_embed.errors import ExecutorUsageError, InvalidPromptError
from lego_embed.model.executor import Executor, GreedySampler
from lego_embed.model.layer_plan import AdaptorStep, LayerPlan
from lego_embed.model.loading import load_model

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return {
        family: load_model(save_tiny_model(tmp_path_factory.mktemp(family), family, seed=5))
        for family in ("qwen2", "mistral")
    }


def prefill(executor, state):
    while (subtask := executor.peek(state)) is not None and subtask.phase == "prefill":
        executor.step(state)


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_batched_decode_equals_unbatched(loaded, family):
    model = loaded[family]
    executor = Executor(model, prefill_chunk_tokens=6)
    prompts = [random_prompt(n, seed=n) for n in (5, 9, 14)]
    new_tokens = [4, 7, 6]
    skip = LayerPlan((0, AdaptorStep(1, 2, torch.nn.Linear(64, 64)), 3))
    plans = [None, skip, None]  # the second request's prefill leaves layers 1-2 without KV
    alone = [
        run_prefill_plan_then_full(executor, p, n, plan)
        for p, n, plan in zip(prompts, new_tokens, plans, strict=True)
    ]
    samplers = [RecordingSampler(None, n) for n in new_tokens]
    states = [
        executor.start(p, s, layer_plan=plan)
        for p, s, plan in zip(prompts, samplers, plans, strict=True)
    ]
    for state in states:
        prefill(executor, state)
        executor.set_layer_plan(state, LayerPlan.full(4))
    batch_sizes = []
    while active := [s for s in states if executor.peek(s) is not None]:
        timing = executor.step_batch(active)
        batch_sizes.append(timing.subtask.tokens)
        assert timing.subtask.context_tokens == max(
            s.timings[-1].subtask.context_tokens for s in active
        )
    assert max(batch_sizes) == 3 and min(batch_sizes) == 1
    oracle = hf_model(model.path)
    for (expected, expected_logits), state, sampler, prompt, plan, n in zip(
        alone, states, samplers, prompts, plans, new_tokens, strict=True
    ):
        assert state.generated == expected.generated
        torch.testing.assert_close(torch.stack(sampler.logits), expected_logits, atol=1e-5, rtol=0)
        if plan is not None and any(model.args.sliding_windows):
            continue  # HF's sliding-window cache cannot hold a layer list with skipped layers
        oracle_tokens, oracle_logits = hf_plan_run(oracle, prompt, [plan] + [None] * (n - 1))
        assert state.generated == oracle_tokens
        torch.testing.assert_close(torch.stack(sampler.logits), oracle_logits, atol=1e-5, rtol=0)


def run_prefill_plan_then_full(executor, prompt, max_new_tokens, prefill_plan):
    """One request prefilled with `prefill_plan`, decoded with all layers."""
    sampler = RecordingSampler(None, max_new_tokens)
    state = executor.start(prompt, sampler, layer_plan=prefill_plan)
    prefill(executor, state)
    executor.set_layer_plan(state, LayerPlan.full(4))
    executor.run_to_completion(state)
    return state, torch.stack(sampler.logits)


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_batched_prefill_of_equal_length_prompts_equals_unbatched(loaded, family):
    model = loaded[family]
    skip = LayerPlan((0, AdaptorStep(1, 2, torch.nn.Linear(64, 64)), 3))
    prompts = [random_prompt(9, seed=n) for n in (21, 22, 23)]
    plans = [skip, skip, skip]
    executor = Executor(model, prefill_chunk_tokens=5)  # chunks of 5 then 4 tokens
    alone = []
    for prompt, plan in zip(prompts, plans, strict=True):
        sampler = RecordingSampler(None, 3)
        state = executor.start(prompt, sampler, layer_plan=plan)
        executor.run_to_completion(state)
        alone.append((state.generated, torch.stack(sampler.logits)))
    samplers = [RecordingSampler(None, 3) for _ in prompts]
    states = [
        executor.start(p, s, layer_plan=plan)
        for p, s, plan in zip(prompts, samplers, plans, strict=True)
    ]
    prefill_batches = 0
    while executor.peek(states[0]) is not None:
        timing = executor.step_batch(states)
        prefill_batches += timing.subtask.phase == "prefill"
        assert timing.subtask.tokens in (3, 15, 12)  # 3 decode/head rows or 3 x chunk tokens
    assert prefill_batches == 2 * (1 + 2 + 1 + 2) + 1  # per chunk: embed, layer 0, adaptor,
    # layer 3 (attention + FFN each); then the head
    for (generated, logits), state, sampler in zip(alone, states, samplers, strict=True):
        assert state.generated == generated
        torch.testing.assert_close(torch.stack(sampler.logits), logits, atol=1e-5, rtol=0)


def test_batching_different_subtasks_is_refused(loaded):
    executor = Executor(loaded["qwen2"])
    a = executor.start(random_prompt(4, seed=1), GreedySampler(None, 3))
    b = executor.start(random_prompt(6, seed=2), GreedySampler(None, 3))
    with pytest.raises(ExecutorUsageError, match="same subtask"):
        executor.step_batch([a, b])  # prefill over different token counts
    prefill(executor, a)
    prefill(executor, b)
    executor.step(a)
    with pytest.raises(ExecutorUsageError, match="same subtask"):
        executor.step_batch([a, b])
    with pytest.raises(ExecutorUsageError, match="distinct"):
        executor.step_batch([b, b])


@pytest.mark.parametrize("chunk", [None, 4])
def test_prefix_reuse_equals_full_prefill_and_never_changes_the_prefix(loaded, chunk):
    model = loaded["mistral"]
    executor = Executor(model, prefill_chunk_tokens=chunk)
    static = random_prompt(10, seed=11)
    prefix = executor.prefill_prefix(static)
    snapshot = [(kv.keys.clone(), kv.values.clone()) for kv in prefix.layers]
    for suffix_seed, suffix_len in ((12, 5), (13, 1), (14, 0)):
        prompt = static + random_prompt(suffix_len, seed=suffix_seed)
        expected, expected_logits = run_greedy(executor, prompt, 5)
        state, logits = run_greedy(executor, prompt, 5, prefix=prefix)
        assert state.generated == expected.generated
        torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=0)
        prefilled = sum(t.subtask.tokens for t in state.timings if t.subtask.kind.value == "embed")
        assert prefilled == max(suffix_len, 1)
    for kv, (keys, values) in zip(prefix.layers, snapshot, strict=True):
        assert torch.equal(kv.keys, keys) and torch.equal(kv.values, values)
        assert len(kv) == len(static)


def test_prompt_must_start_with_the_prefix(loaded):
    executor = Executor(loaded["qwen2"])
    prefix = executor.prefill_prefix([5, 6, 7, 8])
    with pytest.raises(InvalidPromptError, match="does not start with the prefix"):
        executor.start([5, 6, 9, 8, 10], GreedySampler(None, 2), prefix=prefix)


def test_prefix_from_a_finished_request_equals_prefill_prefix(loaded):
    executor = Executor(loaded["qwen2"], prefill_chunk_tokens=3)
    static = random_prompt(7, seed=21)
    first, _ = run_greedy(executor, static + random_prompt(4, seed=22), 3)
    prefix = executor.prefix_from(first, len(static))
    reference = executor.prefill_prefix(static)
    assert prefix.token_ids == reference.token_ids
    for ours, theirs in zip(prefix.layers, reference.layers, strict=True):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=0)
    prompt = static + random_prompt(3, seed=23)
    assert run_greedy(executor, prompt, 4, prefix=prefix)[0].generated == (
        run_greedy(executor, prompt, 4)[0].generated
    )
    skipped = executor.start(
        static, GreedySampler(None, 1), layer_plan=[0, AdaptorStep(1, 3, torch.nn.Identity())]
    )
    executor.run_to_completion(skipped)
    with pytest.raises(ExecutorUsageError, match="skipped layers"):
        executor.prefix_from(skipped, len(static))


def test_remaining_pass_lists_the_rest_of_the_pass(loaded):
    executor = Executor(loaded["qwen2"], prefill_chunk_tokens=4)
    state = executor.start(random_prompt(6, seed=24), GreedySampler(None, 2))
    assert state.prefill_tokens_left == 6
    rest = executor.remaining_pass(state)
    assert [s.kind.value for s in rest[:3]] == ["embed", "attention", "ffn"] and len(rest) == 9
    executor.step(state)
    assert state.prefill_tokens_left == 2 and executor.remaining_pass(state) == rest[1:]
    executor.run_to_completion(state)
    assert executor.remaining_pass(state) == []
