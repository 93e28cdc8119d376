"""Runtime test fixtures: a small random Llama with the combat task's tokenizer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from npc_model_helpers import save_random_npc_model  # noqa: E402

from lego_embed.model.loading import LoadedModel, load_model  # noqa: E402


@pytest.fixture(scope="session")
def npc_loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    torch.set_num_threads(1)
    folder = save_random_npc_model(tmp_path_factory.mktemp("npc_model"), num_layers=8)
    return load_model(folder)
