"""Layer plans with adaptor steps, checked against a hand-written token-by-token reference built
from the Hugging Face model's modules (the oracle), not ours."""

from __future__ import annotations

import pytest
import torch
from hf_oracle import hf_model
from model_helpers import EOS_ID, RecordingSampler, random_prompt, save_tiny_model

from lego_embed.errors import ExecutorUsageError, LayerPlanError
from lego_embed.model.executor import Executor, GreedySampler
from lego_embed.model.layer_plan import AdaptorStep, LayerPlan
from lego_embed.model.loading import load_model

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return {
        family: load_model(save_tiny_model(tmp_path_factory.mktemp(family), family, seed=3))
        for family in ("llama", "mistral")
    }


def rope(x: torch.Tensor, position: int, theta: float) -> torch.Tensor:
    """Rotary embedding of one position for x (heads, head_dim), rotate-half convention."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, half, dtype=torch.float32) / half)
    angle = position * inv_freq
    cos, sin = torch.cat([angle.cos(), angle.cos()]), torch.cat([angle.sin(), angle.sin()])
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def reference_layer(layer, config, x, position, layer_kv: list, window):
    """One decoder layer on one token with an explicit list of (position, key, value)."""
    attn, heads, kv_heads = layer.self_attn, config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    theta = config.rope_parameters["rope_theta"]
    h = layer.input_layernorm(x)
    q = rope(attn.q_proj(h).view(heads, head_dim), position, theta)
    k = rope(attn.k_proj(h).view(kv_heads, head_dim), position, theta)
    layer_kv.append((position, k, attn.v_proj(h).view(kv_heads, head_dim)))
    visible = [e for e in layer_kv if window is None or e[0] > position - window]
    keys = torch.stack([e[1] for e in visible])
    values = torch.stack([e[2] for e in visible])
    outputs = []
    for head in range(heads):
        group = head // (heads // kv_heads)
        weights = torch.softmax(keys[:, group] @ q[head] * head_dim**-0.5, dim=0)
        outputs.append(weights @ values[:, group])
    x = x + attn.o_proj(torch.cat(outputs))
    return x + layer.mlp(layer.post_attention_layernorm(x))


@torch.no_grad()
def reference_run(loaded, prompt, plans_by_position, max_new_tokens):
    """Greedy decoding one token at a time; position p runs plans_by_position(p)."""
    model = hf_model(loaded.path)
    config = model.config
    kv = [[] for _ in range(config.num_hidden_layers)]
    window = getattr(config, "sliding_window", None)
    tokens, all_logits = list(prompt), []
    for position in range(len(prompt) + max_new_tokens - 1):
        x = model.model.embed_tokens.weight[tokens[position]]
        for step in plans_by_position(position).steps:
            if isinstance(step, AdaptorStep):
                x = step.module(x[None, None])[0, 0]
            else:
                x = reference_layer(model.model.layers[step], config, x, position, kv[step], window)
        if position >= len(prompt) - 1:
            logits = model.lm_head(model.model.norm(x))
            all_logits.append(logits)
            tokens.append(int(torch.argmax(logits)))
    return tokens[len(prompt) :], torch.stack(all_logits), [len(layer_kv) for layer_kv in kv]


def adaptor(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(64, 64)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_changing_plans_matches_token_by_token_reference(loaded, family):
    model = loaded[family]
    skip_12 = LayerPlan((0, AdaptorStep(1, 2, adaptor(1)), 3))
    skip_23 = LayerPlan((0, 1, AdaptorStep(2, 3, adaptor(2))))
    full = LayerPlan.full(4)
    prompt = random_prompt(11, seed=8)
    decode_plans = [skip_12, full, full, skip_23, skip_12, full, skip_23]

    def plans_by_position(position):
        return skip_12 if position < len(prompt) else decode_plans[position - len(prompt)]

    expected_tokens, expected_logits, expected_kv = reference_run(
        model, prompt, plans_by_position, len(decode_plans) + 1
    )
    executor = Executor(model, prefill_chunk_tokens=4)
    sampler = RecordingSampler(None, len(decode_plans) + 1)
    state = executor.start(prompt, sampler, layer_plan=skip_12)
    while (subtask := executor.peek(state)) is not None:
        if subtask.phase == "decode" and state.at_pass_start:
            executor.set_layer_plan(state, decode_plans[len(state.generated) - 1])
        executor.step(state)
    assert state.generated == expected_tokens
    torch.testing.assert_close(torch.stack(sampler.logits), expected_logits, atol=1e-5, rtol=0)
    assert [state.kv_tokens(i) for i in range(4)] == expected_kv
    assert expected_kv[0] == len(prompt) + len(decode_plans) and expected_kv[2] < expected_kv[0]


def test_full_plan_reference_equals_executor_without_plan(loaded):
    """The reference itself agrees with the plain executor when nothing is skipped."""
    model = loaded["mistral"]
    prompt = random_prompt(12, seed=9)
    expected, _, _ = reference_run(model, prompt, lambda p: LayerPlan.full(4), 6)
    state = Executor(model).start(prompt, GreedySampler(EOS_ID, 6))
    Executor(model).run_to_completion(state)
    assert state.generated == expected[: len(state.generated)]


def test_adaptor_subtasks_replace_the_span(loaded):
    model = loaded["llama"]
    plan = LayerPlan((AdaptorStep(0, 2, adaptor(3)), 3))
    executor = Executor(model)
    state = executor.start(random_prompt(5, seed=1), GreedySampler(None, 2), layer_plan=plan)
    executor.run_to_completion(state)
    kinds = [
        (t.subtask.kind.value, t.subtask.first_layer, t.subtask.last_layer) for t in state.timings
    ]
    assert kinds == [
        ("embed", -1, -1),
        ("adaptor", 0, 2),
        ("attention", 3, 3),
        ("ffn", 3, 3),
        ("head", -1, -1),
        ("adaptor", 0, 2),
        ("layer", 3, 3),
        ("head", -1, -1),
    ]
    assert plan.skipped_layers == 3


def test_invalid_plans_and_mid_pass_changes_are_refused(loaded):
    model = loaded["llama"]
    executor = Executor(model)
    for bad in ([0, 1, 2], [0, 2, 1, 3], [0, AdaptorStep(1, 1, adaptor(0)), 1, 3], [0, 1, 2, "3"]):
        with pytest.raises(LayerPlanError):
            executor.start([5, 6], GreedySampler(None, 2), layer_plan=bad)
    state = executor.start([5, 6, 7], GreedySampler(None, 2))
    executor.step(state)
    with pytest.raises(ExecutorUsageError, match="between passes"):
        executor.set_layer_plan(state, LayerPlan.full(4))
