"""Two requests whose prompts end prefill chunks of different lengths reach their head at the
same time; the head counts one token per request, so the scheduler batches them. The batched
head must give each request what it gets alone (a Godot run once crashed here: `torch.cat` of
hidden states 25 and 22 tokens long)."""

from __future__ import annotations

import torch
from model_helpers import RecordingSampler, random_prompt, save_tiny_model

from lego_embed.model.executor import Executor, batch_key
from lego_embed.model.loading import load_model
from lego_embed.model.subtask import SubtaskKind


def test_heads_of_prompts_of_different_lengths_batch_like_single_requests(tmp_path):
    model = load_model(save_tiny_model(tmp_path, "qwen2", seed=11))
    executor = Executor(model)
    prompts = [random_prompt(n, seed=n) for n in (22, 25)]
    alone = []
    for prompt in prompts:
        sampler = RecordingSampler(None, 4)
        state = executor.start(prompt, sampler)
        executor.run_to_completion(state)
        alone.append((state.generated, torch.stack(sampler.logits)))
    samplers = [RecordingSampler(None, 4) for _ in prompts]
    states = [executor.start(p, s) for p, s in zip(prompts, samplers, strict=True)]
    for state in states:
        while executor.peek(state).kind is not SubtaskKind.HEAD:
            executor.step(state)
    heads = [executor.peek(s) for s in states]
    assert heads[0].phase == "prefill" and batch_key(heads[0]) == batch_key(heads[1])
    executor.step_batch(states)
    while active := [s for s in states if executor.peek(s) is not None]:
        executor.step_batch(active)
    for (generated, logits), state, sampler in zip(alone, states, samplers, strict=True):
        assert state.generated == generated
        torch.testing.assert_close(torch.stack(sampler.logits), logits, atol=1e-5, rtol=0)
