"""Shared test fixtures: where ../shared is (skips when it is absent), and the combat task's
tokenizer with a tiny random Llama using it. Nothing here imports transformers at import time:
the GPU check runs tests/cuda on a machine without it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from lego_embed.tasks.combat.policy import ACTIONS, random_situation
from lego_embed.tasks.combat.prompt import ANSWER_PREFIX, build_prompt
from lego_embed.tasks.combat.state import validate_state
from lego_embed.tasks.combat.tokenizer import train_npc_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

# Property tests explore new examples on every developer run; CI (CI set) replays one fixed
# sequence, so a red build always names an example that reproduces.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent (looked in {SHARED}); it holds the real traces and data")
    return SHARED


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
    from transformers import LlamaConfig, LlamaForCausalLM

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
