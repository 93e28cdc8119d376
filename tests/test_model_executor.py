"""The partitioned executor on our decoder equals Hugging Face generate, subtask by subtask."""

from __future__ import annotations

import pytest
import torch
from hf_oracle import hf_greedy_reference, hf_model
from model_helpers import EOS_ID, RecordingSampler, random_prompt, run_greedy, save_tiny_model

from lego_embed.errors import ExecutorUsageError, InvalidPromptError, PromptTooLongError
from lego_embed.model.executor import Executor, GreedySampler
from lego_embed.model.loading import load_model
from lego_embed.model.subtask import SubtaskKind

pytestmark = pytest.mark.parity

FAMILIES = ("llama", "qwen2", "mistral")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return {
        family: load_model(save_tiny_model(tmp_path_factory.mktemp(family), family))
        for family in FAMILIES
    }


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("chunk", [None, 3])
def test_subtask_execution_equals_hf_generate(loaded, family, chunk):
    model = loaded[family]
    prompt = random_prompt(13, seed=1)
    expected_tokens, expected_logits = hf_greedy_reference(hf_model(model.path), prompt, 8, EOS_ID)
    state, logits = run_greedy(Executor(model, prefill_chunk_tokens=chunk), prompt, 8)
    assert state.generated == expected_tokens
    assert state.finished
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=0)


def test_program_order_prefill_then_decode(loaded):
    model = loaded["llama"]
    executor = Executor(model, prefill_chunk_tokens=4)
    state = executor.start(random_prompt(6, seed=2), GreedySampler(None, 2))
    executor.run_to_completion(state)
    kinds = [(t.subtask.kind, t.subtask.phase, t.subtask.first_layer) for t in state.timings]
    layers = range(model.num_layers)
    chunk = [(SubtaskKind.EMBED, "prefill", -1)] + [
        (kind, "prefill", i) for i in layers for kind in (SubtaskKind.ATTENTION, SubtaskKind.FFN)
    ]
    decode = [(SubtaskKind.LAYER, "decode", i) for i in layers] + [(SubtaskKind.HEAD, "decode", -1)]
    assert kinds == chunk + chunk + [(SubtaskKind.HEAD, "prefill", -1)] + decode
    prefill_attention = [
        t.subtask for t in state.timings if t.subtask.kind is SubtaskKind.ATTENTION
    ]
    assert [(s.tokens, s.context_tokens) for s in prefill_attention[:1]] == [(4, 4)]
    assert [(s.tokens, s.context_tokens) for s in prefill_attention[-1:]] == [(2, 6)]
    assert state.timings[-2].subtask.context_tokens == 7
    assert all(t.duration_ns > 0 for t in state.timings)


def test_pausing_and_interleaving_requests_changes_nothing(loaded):
    model = loaded["qwen2"]
    executor = Executor(model, prefill_chunk_tokens=5)
    prompts = [random_prompt(11, seed=3), random_prompt(7, seed=4)]
    alone = [run_greedy(executor, p, 6) for p in prompts]
    samplers = [RecordingSampler(EOS_ID, 6) for _ in prompts]
    states = [executor.start(p, s) for p, s in zip(prompts, samplers, strict=True)]
    for _ in range(17):  # pause the first request mid-prefill, run the second to completion
        executor.step(states[0])
    executor.run_to_completion(states[1])
    while any(executor.peek(s) is not None for s in states):
        for s in states:
            if executor.peek(s) is not None:
                executor.step(s)
    for (expected, expected_logits), state, sampler in zip(alone, states, samplers, strict=True):
        assert state.generated == expected.generated
        assert torch.equal(torch.stack(sampler.logits), expected_logits)


def test_stops_at_eos(loaded):
    model = loaded["llama"]
    prompt = random_prompt(9, seed=5)
    first = run_greedy(Executor(model), prompt, 1)[0].generated[0]
    sampler = GreedySampler(eos_token_id=first, max_new_tokens=10)
    state = Executor(model).start(prompt, sampler)
    Executor(model).run_to_completion(state)
    assert state.generated == [first]


def test_bad_requests_are_typed_errors(loaded):
    model = loaded["llama"]
    executor = Executor(model)
    with pytest.raises(PromptTooLongError, match="context of 128 tokens"):
        executor.start(random_prompt(125, seed=6), GreedySampler(None, 4))
    with pytest.raises(InvalidPromptError, match="empty"):
        executor.start([], GreedySampler(None, 4))
    with pytest.raises(InvalidPromptError, match="outside the vocabulary"):
        executor.start([5, 96], GreedySampler(None, 4))
    with pytest.raises(ExecutorUsageError, match="positive"):
        Executor(model, prefill_chunk_tokens=0)
    state = executor.start([5, 6], GreedySampler(None, 1))
    executor.run_to_completion(state)
    assert executor.peek(state) is None
    with pytest.raises(ExecutorUsageError, match="finished"):
        executor.step(state)


def test_context_limit_ends_generation(loaded):
    model = loaded["mistral"]

    class Endless:
        def next_token(self, logits, generated):
            return int(torch.argmax(logits))

        def finished(self, generated):
            return False

    state = Executor(model).start(random_prompt(120, seed=7), Endless())
    Executor(model).run_to_completion(state)
    assert len(state.generated) == 128 - 120


@pytest.mark.parametrize("family", FAMILIES)
def test_equals_hf_eager_attention_too(loaded, family):
    """The oracle's plain matmul-softmax attention (not SDPA) agrees as well, chunked."""
    model = loaded[family]
    prompt = random_prompt(12, seed=10)
    eager = hf_model(model.path, attention="eager")
    expected_tokens, expected_logits = hf_greedy_reference(eager, prompt, 6, EOS_ID)
    state, logits = run_greedy(Executor(model, prefill_chunk_tokens=5), prompt, 6)
    assert state.generated == expected_tokens
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=0)
