"""Loading local Hugging Face folders: the supported families, a typed error per problem."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from model_helpers import hf_greedy_reference, run_greedy, save_tiny_model

from lego_embed.errors import (
    ModelNotFoundError,
    TokenizerMissingError,
    UnsupportedArchitectureError,
)
from lego_embed.model.executor import Executor
from lego_embed.model.loading import BUNDLED_MODEL_DIR, load_model, resolve_model_path


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("llama"), "llama")


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_loads_each_family_in_eval_mode(tmp_path, family):
    loaded = load_model(save_tiny_model(tmp_path, family))
    assert loaded.family == family
    assert loaded.num_layers == 4
    assert loaded.max_context_tokens == 128
    assert loaded.dtype == torch.float32 and loaded.device == torch.device("cpu")
    assert not loaded.model.training
    assert loaded.tokenizer.encode("w5 w7", add_special_tokens=False) == [5, 7]


def test_bundled_name_resolves_to_the_packaged_folder():
    assert resolve_model_path("bundled") == BUNDLED_MODEL_DIR
    assert BUNDLED_MODEL_DIR.parts[-3:] == ("lego_embed", "assets", "npc_model")


def test_missing_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_folder_without_config(tmp_path, llama_folder):
    shutil.copytree(llama_folder, tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(tmp_path / "m")


def test_folder_without_weights(tmp_path, llama_folder):
    shutil.copytree(llama_folder, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="no weights"):
        load_model(tmp_path / "m")


def test_damaged_weights(tmp_path, llama_folder):
    shutil.copytree(llama_folder, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelNotFoundError, match="damaged"):
        load_model(tmp_path / "m")


def test_unsupported_architecture_names_the_supported_ones(tmp_path, llama_folder):
    shutil.copytree(llama_folder, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model_type"] = "gpt2"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match="llama, qwen2, mistral"):
        load_model(tmp_path / "m")


def test_folder_without_tokenizer(tmp_path, llama_folder):
    shutil.copytree(llama_folder, tmp_path / "m")
    (tmp_path / "m" / "tokenizer.json").unlink()
    with pytest.raises(TokenizerMissingError, match="tokenizer.save_pretrained"):
        load_model(tmp_path / "m")


def test_bundled_model_runs_exactly_like_hf_generate():
    if not (BUNDLED_MODEL_DIR / "model.safetensors").is_file():
        pytest.skip(f"the bundled model is not in {BUNDLED_MODEL_DIR} yet (no model.safetensors)")
    prompt_text = "hp 30 enemy hp 80 distance far"
    for dtype, chunked_atol in ((torch.float32, 1e-4), (torch.float64, 1e-5)):
        loaded = load_model("bundled", dtype=dtype)
        assert loaded.num_layers >= 16
        prompt = loaded.tokenizer.encode(prompt_text)
        eos = loaded.tokenizer.eos_token_id
        expected_tokens, expected_logits = hf_greedy_reference(loaded.model, prompt, 4, eos)
        for chunk, atol in ((None, 1e-5), (5, chunked_atol)):
            executor = Executor(loaded, prefill_chunk_tokens=chunk)
            state, logits = run_greedy(executor, prompt, 4, eos)
            assert state.generated == expected_tokens
            # float32 chunked prefill sums in another order: |diff| ~1e-5 on logits of ~13.
            torch.testing.assert_close(logits, expected_logits, atol=atol, rtol=0)
