"""Small models and data for the layer-skipping tests: a randomly initialised 6-layer Llama with
the combat task's tokenizer, saved as a local HF folder, and calibration batches from the task."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lego_embed.cli.skip_commands import task_sequences
from lego_embed.skip.calibration import CalibrationExample, make_batches
from lego_embed.tasks.combat.policy import ACTIONS, expert_action, random_situation
from lego_embed.tasks.combat.prompt import ANSWER_PREFIX, build_prompt
from lego_embed.tasks.combat.state import validate_state
from lego_embed.tasks.combat.tokenizer import train_npc_tokenizer

NUM_LAYERS = 6


def save_tiny_npc_model(folder: Path, seed: int = 0) -> Path:
    """A 6-layer, 64-wide random Llama with a BPE tokenizer trained on combat prompts."""
    rng = random.Random(seed)
    texts = []
    for _ in range(1500):
        state = validate_state(random_situation(rng))
        texts.append(build_prompt(state) + ANSWER_PREFIX + expert_action(state))
    texts += [ANSWER_PREFIX + action for action in ACTIONS]
    tokenizer = train_npc_tokenizer(texts, vocab_size=300)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
        num_hidden_layers=NUM_LAYERS, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=96, initializer_range=0.1, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save(folder)
    return folder


def task_examples(tokenizer, count: int, seed: int) -> tuple[list[CalibrationExample], list[str]]:
    """Prompt + expert answer sequences of `count` random situations, and the expert actions."""
    rng = random.Random(seed)
    return task_sequences(tokenizer, [random_situation(rng) for _ in range(count)])


def task_batches(tokenizer, count: int, seed: int, batch_size: int = 16):
    examples, _ = task_examples(tokenizer, count, seed)
    return make_batches(examples, batch_size, tokenizer.pad_token_id)


def random_bundle(loaded, spans: list[tuple[int, int]], seed: int = 0):
    """A SkipBundle for `loaded` whose adaptors have random (non-identity) weights."""
    from lego_embed.skip.adaptor import AdaptorShape, SpanAdaptor
    from lego_embed.skip.bundle import ModelIdentity, SkipBundle, SkipLevel
    from lego_embed.skip.spans import Span

    torch.manual_seed(seed)
    hidden = loaded.args.hidden_size
    levels, adaptors = [], {}
    for number, (first, last) in enumerate(spans, start=1):
        shape = AdaptorShape(hidden, 32, 1e-5)
        adaptor = SpanAdaptor(shape)
        torch.nn.init.normal_(adaptor.down.weight, std=0.05)
        adaptors[number] = adaptor.eval()
        levels.append(SkipLevel(number, Span(first, last), shape, shape.parameter_count * 4))
    return SkipBundle(ModelIdentity.of(loaded), levels, adaptors)


class RecordingGreedySampler:
    """Greedy TokenSampler for `max_new_tokens` tokens that keeps every logits vector."""

    def __init__(self, max_new_tokens: int) -> None:
        self.max_new_tokens = max_new_tokens
        self.logits: list[torch.Tensor] = []

    def next_token(self, logits: torch.Tensor, generated) -> int:
        self.logits.append(logits.detach().clone())
        return int(torch.argmax(logits))

    def finished(self, generated) -> bool:
        return len(generated) >= self.max_new_tokens
