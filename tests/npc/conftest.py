"""Fixtures for the NPC tests: the combat task's tokenizer and a tiny random Llama using it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lego_embed.npc.combat_task import ACTIONS, random_situation
from lego_embed.npc.prompt import ANSWER_PREFIX, build_prompt
from lego_embed.npc.state import validate_state
from lego_embed.npc.tokenizer import train_npc_tokenizer


@pytest.fixture(scope="session")
def npc_tokenizer():
    rng = random.Random(0)
    texts = [
        build_prompt(validate_state(random_situation(rng))) + ANSWER_PREFIX + rng.choice(ACTIONS)
        for _ in range(2000)
    ]
    return train_npc_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_npc_model_dir(tmp_path_factory, npc_tokenizer) -> Path:
    """A 4-layer random-init Llama with the combat tokenizer, saved as a local HF folder."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=npc_tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, bos_token_id=npc_tokenizer.bos_token_id,
        eos_token_id=npc_tokenizer.eos_token_id, pad_token_id=npc_tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny_npc_model")
    LlamaForCausalLM(config).save_pretrained(folder)
    npc_tokenizer.save(folder)
    return folder
