"""A small random Llama with a tokenizer trained on the combat task's prompts, for runtime tests.

The weights are random (untrained), so decisions are arbitrary but always allowed actions; the
tokenizer is the combat task's, so prompts and actions encode as they do for the bundled model.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from lego_embed.tasks.combat.policy import ACTIONS, random_situation
from lego_embed.tasks.combat.prompt import ANSWER_PREFIX, build_prompt
from lego_embed.tasks.combat.state import validate_state
from lego_embed.tasks.combat.tokenizer import train_npc_tokenizer


def save_random_npc_model(
    folder: Path, num_layers: int = 8, hidden: int = 64, seed: int = 0
) -> Path:
    rng = random.Random(seed)
    texts = [
        build_prompt(validate_state(random_situation(rng))) + ANSWER_PREFIX + rng.choice(ACTIONS)
        for _ in range(400)
    ]
    tokenizer = train_npc_tokenizer(texts, vocab_size=400)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, initializer_range=0.1, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save(folder)
    return folder
