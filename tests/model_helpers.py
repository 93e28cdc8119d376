"""Tiny randomly initialised Llama / Qwen2 / Mistral models saved as local HF folders, for tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from lego_embed.model.sampling import GreedySampler

torch.set_num_threads(1)  # tiny models: one thread is faster on a shared 2-core machine

VOCAB_SIZE = 96
EOS_ID = 2
COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    initializer_range=0.1,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=EOS_ID,
    pad_token_id=0,
)
CONFIGS = {
    "llama": lambda: LlamaConfig(**{**COMMON, "tie_word_embeddings": True}),
    "qwen2": lambda: Qwen2Config(**COMMON),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=8),
}


def save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over "<pad> <s> </s> <unk> w4 .. w95"."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, VOCAB_SIZE)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.save_pretrained(folder)


def save_tiny_model(folder: Path, family: str, seed: int = 0) -> Path:
    """Saves a tiny random `family` model plus tokenizer in `folder`; returns the folder."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[family]())
    model.save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def random_prompt(length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB_SIZE, (length,), generator=generator).tolist()


def hf_greedy_reference(model, prompt: list[int], max_new_tokens: int, eos_token_id=EOS_ID):
    """`model.generate(do_sample=False)` tokens and the logits generate chose each one from."""
    with torch.no_grad():
        output = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = output.sequences[0, len(prompt) :].tolist()
    return tokens, torch.stack([step[0] for step in output.logits]).float()


@dataclass
class RecordingSampler(GreedySampler):
    """Greedy, and keeps every logits vector it was given."""

    logits: list[torch.Tensor] = field(default_factory=list)

    def next_token(self, logits, generated):
        self.logits.append(logits.clone())
        return super().next_token(logits, generated)


def run_greedy(executor, prompt, max_new_tokens, eos_token_id=EOS_ID, **start_kwargs):
    """Runs one greedy request to completion; returns its state and the stacked logits."""
    sampler = RecordingSampler(eos_token_id, max_new_tokens)
    state = executor.start(prompt, sampler, **start_kwargs)
    executor.run_to_completion(state)
    return state, torch.stack(sampler.logits)
