"""Tiny randomly initialised Llama / Qwen2 / Mistral models saved as local HF folders, for tests.

The folders are written with transformers (the way users get their models), and read by our
loader; tests compare our decoder with transformers on the same folder (`hf_oracle`)."""

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
CONFIG_CLASSES = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}
FAMILY_SETTINGS = {
    "llama": {"tie_word_embeddings": True},
    "qwen2": {},
    "mistral": {"sliding_window": 8},
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


def save_tiny_model(
    folder: Path, family: str, seed: int = 0, shard_size: str | None = None, **overrides
) -> Path:
    """Saves a tiny random `family` model plus tokenizer in `folder`; returns the folder.
    `overrides` change config fields; `shard_size` (e.g. "40KB") saves a sharded checkpoint."""
    torch.manual_seed(seed)
    config = CONFIG_CLASSES[family](**{**COMMON, **FAMILY_SETTINGS[family], **overrides})
    model = AutoModelForCausalLM.from_config(config)
    if shard_size is None:
        model.save_pretrained(folder)
    else:
        model.save_pretrained(folder, max_shard_size=shard_size)
    save_tokenizer(folder)
    return folder


def random_prompt(length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB_SIZE, (length,), generator=generator).tolist()


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


# Qwen2-Instruct's chat template, as its tokenizer_config.json ships it.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHAT_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ENGLISH = (
    "You are Mara, the shopkeeper of the Rusty Lantern. You sell rope, lamps and maps.",
    "The player offers 12 gold for a lamp. The player says: can you go lower?",
    "Guard Ada saw the player 3 seconds ago near the north gate and raised the alarm.",
    "Sell, haggle, refuse, call the guard, greet the customer, close the shop.",
    "Squad, hold the line! Flank left, cover the medic, fall back to the wall.",
)


def save_english_model(folder: Path, family: str = "qwen2", chat_template: str | None = None,
                       seed: int = 0) -> Path:
    """A tiny random `family` model whose byte-level BPE tokenizer (no unknown tokens: any
    text encodes) has the ChatML special tokens, EOS <|im_end|>; with `chat_template` it is an
    instruct-style folder (the template saved as transformers saves it)."""
    from tokenizers import decoders, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE * 3, special_tokens=list(CHAT_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(ENGLISH * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    torch.manual_seed(seed)
    config = CONFIG_CLASSES[family](**{
        **COMMON, **FAMILY_SETTINGS[family], "vocab_size": backend.get_vocab_size(),
        "bos_token_id": None, "eos_token_id": backend.token_to_id("<|im_end|>"),
        "pad_token_id": backend.token_to_id("<|endoftext|>"), "max_position_embeddings": 512,
    })
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
