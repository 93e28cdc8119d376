"""Fixtures of the layer-skipping tests: one tiny NPC-task model per test session."""

from __future__ import annotations

import pytest
import torch
from skip_helpers import save_tiny_npc_model

from lego_embed.model.loading import load_model


@pytest.fixture(scope="session")
def tiny_npc_model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return save_tiny_npc_model(tmp_path_factory.mktemp("tiny_npc"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_npc_model_dir):
    return load_model(tiny_npc_model_dir)
