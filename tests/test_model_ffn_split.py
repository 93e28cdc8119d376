"""Split FFN blocks: an FFN block over slices of its intermediate dimension equals the unsplit
block, alone, inside a whole request, and batched."""

from __future__ import annotations

import pytest
import torch
from model_helpers import RecordingSampler, random_prompt, run_greedy, save_tiny_model

from lego_embed.model.executor import Executor
from lego_embed.model.loading import load_model
from lego_embed.model.subtask import SubtaskKind


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return {
        "llama_mlp_bias": load_model(save_tiny_model(
            tmp_path_factory.mktemp("llama"), "llama", seed=3, mlp_bias=True)),
        "qwen2": load_model(save_tiny_model(tmp_path_factory.mktemp("qwen2"), "qwen2", seed=4)),
    }


def sliced_ffn_block(layer, h: torch.Tensor, parts: int) -> torch.Tensor:
    inter = layer.feed_forward.w2.in_features
    normed = layer.ffn_norm(h)
    total = torch.zeros_like(h)
    for part in range(parts):
        start, end = part * inter // parts, (part + 1) * inter // parts
        total = total + layer.feed_forward.partial(normed, start, end, part == parts - 1)
    return h + total


@pytest.mark.parametrize("name", ["llama_mlp_bias", "qwen2"])
@pytest.mark.parametrize("parts", [2, 3, 4, 128])
def test_an_ffn_block_over_slices_equals_the_unsplit_block(loaded, name, parts):
    model = loaded[name].model
    h = torch.randn(2, 7, model.args.hidden_size, generator=torch.Generator().manual_seed(parts))
    for layer in model.layers:
        with torch.no_grad():
            whole = layer.ffn_block(h)
            split = sliced_ffn_block(layer, h, parts)
        # float32: only the summation order differs
        assert torch.allclose(split, whole, atol=1e-6, rtol=0)
        assert not torch.equal(layer.ffn_norm(h), h)  # the block does real work
    double = [layer.to(torch.float64) for layer in model.layers[:1]]
    try:
        with torch.no_grad():
            h64 = h.double()
            assert torch.allclose(sliced_ffn_block(double[0], h64, parts),
                                  double[0].ffn_block(h64), atol=1e-12, rtol=0)
    finally:
        double[0].to(torch.float32)


@pytest.mark.parametrize("name", ["llama_mlp_bias", "qwen2"])
def test_a_request_with_split_ffn_blocks_equals_the_unsplit_request(loaded, name):
    executor = Executor(loaded[name], prefill_chunk_tokens=5)
    prompt = random_prompt(13, seed=11)
    reference, reference_logits = run_greedy(executor, prompt, 6)
    sampler = RecordingSampler(None, 6)
    state = executor.start(prompt, sampler)
    splits = 0
    while (subtask := executor.peek(state)) is not None:
        if subtask.kind is SubtaskKind.FFN:
            assert executor.split_next(state, 2 + splits % 3)
            splits += 1
            assert executor.peek(state).kind is SubtaskKind.FFN_SLICE
        executor.step(state)
    assert splits == 4 * 3  # every layer's FFN of every prefill chunk (decode runs LAYERs)
    assert state.generated == reference.generated
    assert torch.allclose(torch.stack(sampler.logits), reference_logits, atol=1e-5, rtol=0)
    for ours, theirs in zip(state.kv, reference.kv, strict=True):
        assert torch.allclose(ours.keys, theirs.keys, atol=1e-5, rtol=0)
        assert torch.allclose(ours.values, theirs.values, atol=1e-5, rtol=0)
    kinds = [t.subtask.kind for t in state.timings]
    assert kinds.count(SubtaskKind.FFN_SLICE) == sum(2 + k % 3 for k in range(splits))
    assert SubtaskKind.FFN not in kinds


def test_split_slices_run_batched_like_alone(loaded):
    executor = Executor(loaded["qwen2"])
    prompts = [random_prompt(9, seed=s) for s in (1, 2)]
    alone = [run_greedy(executor, p, 3)[0] for p in prompts]
    states = [executor.start(p, RecordingSampler(None, 3)) for p in prompts]
    while executor.peek(states[0]) is not None:
        if executor.peek(states[0]).kind is SubtaskKind.FFN:
            for state in states:
                executor.split_next(state, 4)
        timing = executor.step_batch(states)
        assert timing.subtask.tokens in (1, 2, 18)
    for state, reference in zip(states, alone, strict=True):
        assert state.generated == reference.generated
        for ours, theirs in zip(state.kv, reference.kv, strict=True):
            assert torch.allclose(ours.keys, theirs.keys, atol=1e-5, rtol=0)


def test_only_a_whole_ffn_block_can_be_split(loaded):
    executor = Executor(loaded["qwen2"])
    state = executor.start(random_prompt(6, seed=3), RecordingSampler(None, 2))
    assert executor.peek(state).kind is SubtaskKind.EMBED
    assert not executor.split_next(state, 2)  # an embedding
    executor.step(state)
    executor.step(state)  # attention of layer 0
    assert not executor.split_next(state, 1)  # one part is no split
    assert not executor.split_next(state, 10_000)  # more parts than intermediate units
    assert executor.split_next(state, 2)
    assert not executor.split_next(state, 2)  # already a slice
