"""The CUDA path, on a real GPU (skipped without one): the executor on CUDA equals the CPU
reference, its work runs on the lowest-priority stream, its CUDA-event timings agree with the
wall time of synchronised runs, NVML reads the device, and the runtime decides on CUDA.

Runs on the GPU machine as it is (tools/gpu_check.sh): torch, safetensors, tokenizers, pytest
and nvidia-ml-py only, so the models are made here, not with transformers. The GPU check's
rehearsal runs the comparisons with LEGO_CUDA_TESTS_DEVICE=cpu (the CPU against itself: no
result, only proof that the tests run); what needs a real GPU then skips.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from pathlib import Path

import pytest
import torch

from lego_embed.model.config import ModelArgs
from lego_embed.model.decoder import Transformer
from lego_embed.model.executor import Executor, GreedySampler
from lego_embed.model.loading import LoadedModel, load_model
from lego_embed.runtime.gpu_stats import nvml_stats
from lego_embed.tasks.combat.policy import ACTIONS
from lego_embed.tasks.combat.request import combat_request

DEVICE = os.environ.get("LEGO_CUDA_TESTS_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="no CUDA device on this machine"),
]
needs_gpu = pytest.mark.skipif(DEVICE != "cuda", reason="a rehearsal on the CPU")

FAMILIES = {
    "llama": {"model_type": "llama"},
    "qwen2": {"model_type": "qwen2"},
    "mistral": {"model_type": "mistral", "sliding_window": 8},
}
FP32_TOLERANCE = 1e-4  # tiny random models; the bundled one: 1e-3 (logits of magnitude ~13)
NEAR_TIE = 0.05  # share of the top logit under which a top-2 margin counts as a tie


def random_model(family: str, device: str, dtype: torch.dtype, std: float) -> LoadedModel:
    args = ModelArgs.from_dict({
        **FAMILIES[family], "vocab_size": 96, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 128, "eos_token_id": 2,
    })
    model = Transformer(args, "cpu", torch.float32)
    model.init_weights(std=std, generator=torch.Generator().manual_seed(0))
    model = model.to(device, dtype).eval()
    return LoadedModel(model, None, Path(f"random:{family}"), torch.device(device), dtype)


def on(loaded: LoadedModel, device: str, dtype: torch.dtype) -> LoadedModel:
    return LoadedModel(copy.deepcopy(loaded.model).to(device, dtype), loaded.tokenizer,
                       loaded.path, torch.device(device), dtype)


class LogitsSampler(GreedySampler):
    """Greedy; keeps every logits vector (float32, on the CPU)."""

    def __init__(self, max_new_tokens: int) -> None:
        super().__init__(None, max_new_tokens)
        self.logits: list[torch.Tensor] = []

    def next_token(self, logits, generated):
        self.logits.append(logits.float().cpu())
        return super().next_token(logits, generated)


def greedy(loaded: LoadedModel, prompt: list[int], tokens: int, chunk: int | None = None):
    sampler = LogitsSampler(tokens)
    state = Executor(loaded, prefill_chunk_tokens=chunk).start(prompt, sampler)
    Executor(loaded, prefill_chunk_tokens=chunk).run_to_completion(state)
    return state.generated, torch.stack(sampler.logits)


def prompt_of(length: int, seed: int) -> list[int]:
    return torch.randint(4, 96, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fp32_on_cuda_equals_the_cpu_reference(family: str) -> None:
    cpu = random_model(family, "cpu", torch.float32, std=0.1)
    cuda = on(cpu, DEVICE, torch.float32)
    prompt = prompt_of(20, seed=1)
    cpu_tokens, cpu_logits = greedy(cpu, prompt, 6, chunk=7)
    cuda_tokens, cuda_logits = greedy(cuda, prompt, 6, chunk=7)
    assert cuda_tokens == cpu_tokens
    torch.testing.assert_close(cuda_logits, cpu_logits, atol=FP32_TOLERANCE, rtol=0)


def test_bundled_model_fp32_on_cuda_equals_the_cpu_reference() -> None:
    cpu = load_model("bundled")
    cuda = load_model("bundled", device=DEVICE)
    prompt = cpu.tokenizer.encode("brute hp 70 enemy hp 60 dist 2.0 last heavy_windup")
    cpu_tokens, cpu_logits = greedy(cpu, prompt, 4)
    cuda_tokens, cuda_logits = greedy(cuda, prompt, 4)
    assert cuda_tokens == cpu_tokens
    torch.testing.assert_close(cuda_logits, cpu_logits, atol=1e-3, rtol=0)


class ForcedSampler(LogitsSampler):
    """Keeps the logits but always answers the reference's next token (teacher forcing), so
    every step of two runs sees the same context."""

    def __init__(self, tokens: list[int]) -> None:
        super().__init__(len(tokens))
        self.tokens = tokens

    def next_token(self, logits, generated):
        super().next_token(logits, generated)
        return self.tokens[len(generated)]


def clear_steps_agree(reference: LoadedModel, other: LoadedModel, prompt: list[int],
                      tokens: int) -> tuple[int, int]:
    """(steps where the reference's greedy choice is clear, how many of them `other` makes the
    same choice at, both fed the reference's tokens)."""
    chosen, logits = greedy(reference, prompt, tokens)
    sampler = ForcedSampler(chosen)
    state = Executor(other).start(prompt, sampler)
    Executor(other).run_to_completion(state)
    clear = agree = 0
    for row, other_row, token in zip(logits, sampler.logits, chosen, strict=True):
        top = torch.topk(row, 2).values
        if top[0] - top[1] >= NEAR_TIE * top[0].abs():
            clear += 1
            agree += int(other_row.argmax()) == token
    return clear, agree


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bf16_greedy_choices_on_cuda_equal_the_fp32_reference(family: str) -> None:
    cpu = random_model(family, "cpu", torch.float32, std=0.3)
    cuda = on(cpu, DEVICE, torch.bfloat16)
    results = [clear_steps_agree(cpu, cuda, prompt_of(16, seed), 8) for seed in (2, 3, 4)]
    clear, agree = map(sum, zip(*results, strict=True))
    assert clear >= 10, "too few clear choices in the reference for a meaningful comparison"
    assert agree == clear


def test_bundled_model_bf16_decisions_on_cuda_equal_the_fp32_reference() -> None:
    cpu = load_model("bundled")
    cuda = load_model("bundled", device=DEVICE, dtype=torch.bfloat16)
    texts = ["brute hp 70 enemy hp 60 dist 2.0", "archer hp 20 enemy hp 90 dist 8.0",
             "healer hp 35 enemy hp 50 dist 3.5"]
    results = [clear_steps_agree(cpu, cuda, cpu.tokenizer.encode(t), 3) for t in texts]
    clear, agree = map(sum, zip(*results, strict=True))
    assert clear >= 3 and agree == clear


@needs_gpu
def test_subtasks_run_on_the_lowest_priority_stream() -> None:
    loaded = random_model("llama", "cuda", torch.float32, std=0.1)
    executor = Executor(loaded)
    streams = []

    def record(module, inputs):
        streams.append(torch.cuda.current_stream())

    hooks = [m.register_forward_pre_hook(record) for layer in loaded.model.layers
             for m in (layer.attention, layer.feed_forward)]
    try:
        state = executor.start(prompt_of(10, seed=3), GreedySampler(None, 3))
        executor.run_to_completion(state)
    finally:
        for hook in hooks:
            hook.remove()
    lowest = max(torch.cuda.Stream.priority_range())
    assert streams and all(s == executor.timer.stream for s in streams)
    assert executor.timer.stream.priority == lowest
    assert executor.timer.stream != torch.cuda.current_stream()  # not the default stream


@needs_gpu
def test_event_duration_agrees_with_a_synchronised_wall_time() -> None:
    args = ModelArgs.from_dict({
        "model_type": "llama", "vocab_size": 1024, "hidden_size": 2048,
        "intermediate_size": 7168, "num_hidden_layers": 2, "num_attention_heads": 16,
        "num_key_value_heads": 4, "max_position_embeddings": 4096,
    })
    model = Transformer(args, "cuda", torch.bfloat16)
    model.init_weights()
    loaded = LoadedModel(model.eval(), None, Path("random:llama"), torch.device("cuda"),
                         torch.bfloat16)
    executor = Executor(loaded)
    prompt = prompt_of(512, seed=4)
    event_us = []
    for _ in range(12):
        state = executor.start(prompt, GreedySampler(None, 1))
        executor.step(state)  # EMBED
        executor.step(state)  # ATTENTION of layer 0
        event_us.append(executor.step(state).duration_ns / 1e3)  # FFN of layer 0
    hidden = torch.randn(1, 512, 2048, device="cuda", dtype=torch.bfloat16)
    layer = model.layers[0]
    wall_us = []
    with torch.inference_mode():
        for _ in range(12):
            torch.cuda.synchronize()
            started = time.perf_counter()
            layer.ffn_block(hidden)
            torch.cuda.synchronize()
            wall_us.append((time.perf_counter() - started) * 1e6)
    event, wall = statistics.median(event_us[2:]), statistics.median(wall_us[2:])
    # the wall time adds a launch and a synchronisation (tens of µs) to the same kernels
    assert event <= wall * 1.1 + 5
    assert wall <= event * 1.5 + 100


@needs_gpu
def test_nvml_reads_the_device() -> None:
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    stats = nvml_stats()
    assert stats["nvml"] == "ok", stats
    assert stats["memory_total_bytes"] > 0 and 0 <= stats["gpu_util_pct"] <= 100


def test_the_runtime_decides_on_cuda() -> None:
    from lego_embed.runtime.runtime import Runtime, RuntimeConfig
    from lego_embed.skip.bundle import SkipBundle

    loaded = load_model("bundled", device=DEVICE)
    bundle = SkipBundle.load(loaded.path / "skip_bundle", loaded)
    runtime = Runtime(loaded, bundle, RuntimeConfig(policy="lego"))
    runtime.start()
    try:
        state = {"persona": "brute", "hp": 70, "enemy_hp": 60, "distance": 2.0,
                 "enemy_last_action": "heavy_windup",
                 "cooldowns": {"dodge": 0, "heal": 0, "heavy": 0}, "allies": 1}
        runtime.submit(combat_request("npc0", state, ACTIONS, 60000.0))
        decisions = []
        deadline = time.monotonic() + 120
        while not decisions and (left_s := deadline - time.monotonic()) > 0:
            decisions = runtime.poll(timeout_s=left_s)
    finally:
        runtime.stop()
    assert decisions and decisions[0].action in ACTIONS, decisions
    assert decisions[0].compute_ms > 0  # measured with CUDA events
