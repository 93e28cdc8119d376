"""Loading local Hugging Face folders into our decoder: every supported family, rope and layout
equals the transformers oracle, and every bad folder gets a typed error naming what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hf_oracle import hf_greedy_reference, hf_model, hf_tokenizer
from model_helpers import EOS_ID, random_prompt, run_greedy, save_tiny_model

from lego_embed.errors import (
    ModelConfigError,
    ModelNotFoundError,
    ModelWeightsError,
    TokenizerMissingError,
    UnsupportedArchitectureError,
)
from lego_embed.model.config import ModelArgs
from lego_embed.model.executor import Executor
from lego_embed.model.loading import BUNDLED_MODEL_DIR, load_model, resolve_model_path

pytestmark = pytest.mark.parity

ROPE_VARIANTS = {
    "linear": {"rope_type": "linear", "factor": 2.5},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
}


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("llama"), "llama")


def copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def assert_equals_oracle(folder: Path, prompt_tokens: int = 60, new_tokens: int = 5) -> None:
    """Whole-sequence logits and chunked greedy decoding equal the HF model of the folder."""
    loaded = load_model(folder)
    oracle = hf_model(folder)
    prompt = random_prompt(prompt_tokens, seed=21)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ours = loaded.model(ids).logits
        theirs = oracle(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    expected_tokens, expected_logits = hf_greedy_reference(oracle, prompt, new_tokens, EOS_ID)
    state, logits = run_greedy(Executor(loaded, prefill_chunk_tokens=7), prompt, new_tokens)
    assert state.generated == expected_tokens
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_loads_each_family_in_eval_mode(tmp_path, family):
    loaded = load_model(save_tiny_model(tmp_path, family))
    assert loaded.family == family
    assert loaded.num_layers == 4
    assert loaded.max_context_tokens == 128
    assert loaded.dtype == torch.float32 and loaded.device == torch.device("cpu")
    assert not loaded.model.training
    assert loaded.tokenizer.encode("w5 w7", add_special_tokens=False) == [5, 7]
    assert loaded.args.tie_word_embeddings == (family == "llama")
    assert (loaded.model.output.weight is loaded.model.embed.weight) == (family == "llama")


@pytest.mark.parametrize("rope", sorted(ROPE_VARIANTS))
def test_scaled_rope_equals_the_oracle(tmp_path, rope):
    folder = save_tiny_model(tmp_path, "llama", rope_parameters=dict(ROPE_VARIANTS[rope]))
    assert load_model(folder).args.rope.rope_type == rope
    assert_equals_oracle(folder)


def test_qwen2_yarn_and_per_layer_sliding_windows_equal_the_oracle(tmp_path):
    folder = save_tiny_model(
        tmp_path, "qwen2", use_sliding_window=True, sliding_window=9, max_window_layers=2,
        rope_parameters=dict(ROPE_VARIANTS["yarn"]),
    )
    assert load_model(folder).args.sliding_windows == (None, None, 9, 9)
    assert_equals_oracle(folder, prompt_tokens=30)


def test_attention_and_mlp_biases_equal_the_oracle(tmp_path):
    folder = save_tiny_model(tmp_path, "llama", attention_bias=True, mlp_bias=True,
                             tie_word_embeddings=False, head_dim=24)
    args = load_model(folder).args
    assert (args.qkv_bias, args.out_bias, args.mlp_bias, args.head_dim) == (True, True, True, 24)
    assert_equals_oracle(folder, prompt_tokens=20)


def test_legacy_rope_spelling_reads_like_the_current_one(tmp_path, llama_folder):
    """Older config.json files carry rope_theta and rope_scaling {"type": ...}."""
    folder = copy_folder(llama_folder, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config.pop("rope_parameters")
    config.update(rope_theta=5000.0, rope_scaling={"type": "linear", "factor": 2.0})
    (folder / "config.json").write_text(json.dumps(config))
    rope = load_model(folder).args.rope
    assert (rope.rope_type, rope.theta, rope.factor) == ("linear", 5000.0, 2.0)
    assert_equals_oracle(folder, prompt_tokens=20)


def test_sharded_checkpoint_equals_the_single_file(tmp_path):
    single = load_model(save_tiny_model(tmp_path / "single", "qwen2", seed=5))
    sharded_folder = save_tiny_model(tmp_path / "sharded", "qwen2", seed=5, shard_size="40KB")
    assert len(list(sharded_folder.glob("model-*.safetensors"))) > 1
    sharded = load_model(sharded_folder)
    ids = torch.tensor([random_prompt(10, seed=2)])
    with torch.no_grad():
        torch.testing.assert_close(sharded.model(ids).logits, single.model(ids).logits,
                                   atol=0, rtol=0)


def test_tokenizer_equals_the_oracle_on_the_bundled_model():
    ours = load_model("bundled").tokenizer
    theirs = hf_tokenizer(BUNDLED_MODEL_DIR)
    text = "brute hp 70 enemy hp 60 dist 2.0 last heavy_windup cd dodge 0 heal 0 heavy 0 allies 1"
    assert ours.encode(text) == theirs.encode(text)
    assert ours.encode(text, add_special_tokens=False) == theirs.encode(
        text, add_special_tokens=False)
    ids = ours.encode(text) + [ours.eos_token_id]
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(
        ids, skip_special_tokens=True)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id)


def test_bundled_name_resolves_to_the_packaged_folder():
    assert resolve_model_path("bundled") == BUNDLED_MODEL_DIR
    assert BUNDLED_MODEL_DIR.parts[-3:] == ("lego_embed", "assets", "npc_model")


def test_missing_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_folder_without_config(tmp_path, llama_folder):
    (copy_folder(llama_folder, tmp_path / "m") / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(tmp_path / "m")


def test_malformed_config(tmp_path, llama_folder):
    (copy_folder(llama_folder, tmp_path / "m") / "config.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "vocab_size"])
def test_config_without_a_required_field_names_it(tmp_path, llama_folder, field):
    folder = copy_folder(llama_folder, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    del config[field]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelConfigError, match=f"lacks {field}"):
        load_model(folder)


def test_config_with_a_bad_value_names_it(tmp_path, llama_folder):
    edit_config(copy_folder(llama_folder, tmp_path / "m"), num_key_value_heads=3)
    with pytest.raises(ModelConfigError, match="not a multiple of num_key_value_heads 3"):
        load_model(tmp_path / "m")


def test_unsupported_architecture_names_the_supported_ones(tmp_path, llama_folder):
    edit_config(copy_folder(llama_folder, tmp_path / "m"), model_type="gpt2")
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2'.*llama, qwen2, mistral"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope", "made_up"])
def test_unsupported_rope_type_is_refused_by_name(tmp_path, llama_folder, rope_type):
    edit_config(copy_folder(llama_folder, tmp_path / "m"),
                rope_parameters={"rope_type": rope_type, "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(UnsupportedArchitectureError, match=f"rope type '{rope_type}'"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize(("changes", "message"), [
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"quantization_config": {"quant_method": "awq"}}, "quantized \\(awq\\)"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}},
     "llama3' needs low_freq_factor, high_freq_factor"),
])
def test_unsupported_settings_are_refused_by_name(tmp_path, llama_folder, changes, message):
    edit_config(copy_folder(llama_folder, tmp_path / "m"), **changes)
    with pytest.raises((UnsupportedArchitectureError, ModelConfigError), match=message):
        load_model(tmp_path / "m")


def test_folder_without_weights(tmp_path, llama_folder):
    (copy_folder(llama_folder, tmp_path / "m") / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="no model.safetensors"):
        load_model(tmp_path / "m")


def test_damaged_weights(tmp_path, llama_folder):
    folder = copy_folder(llama_folder, tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelWeightsError, match="damaged"):
        load_model(folder)


def test_missing_shard_is_named(tmp_path):
    folder = save_tiny_model(tmp_path, "mistral", shard_size="40KB")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(ModelWeightsError, match=f"lacks shard\\(s\\) {shard.name}"):
        load_model(folder)


def test_weight_of_the_wrong_shape_is_named(tmp_path, llama_folder):
    edit_config(copy_folder(llama_folder, tmp_path / "m"), intermediate_size=96)
    with pytest.raises(ModelWeightsError, match="gate_proj.weight has shape \\(128, 64\\)"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize(("layers", "message"), [(3, "unknown tensor"), (5, "missing")])
def test_layer_count_mismatch_is_refused(tmp_path, llama_folder, layers, message):
    edit_config(copy_folder(llama_folder, tmp_path / "m"), num_hidden_layers=layers)
    with pytest.raises(ModelWeightsError, match=message):
        load_model(tmp_path / "m")


def test_folder_without_tokenizer(tmp_path, llama_folder):
    (copy_folder(llama_folder, tmp_path / "m") / "tokenizer.json").unlink()
    with pytest.raises(TokenizerMissingError, match="no tokenizer.json"):
        load_model(tmp_path / "m")


def test_config_args_match_the_oracle_config(llama_folder):
    args = ModelArgs.from_folder(llama_folder)
    config = hf_model(llama_folder).config
    assert (args.hidden_size, args.num_heads, args.num_kv_heads, args.num_layers) == (
        config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
        config.num_hidden_layers)
    assert args.eos_token_id == config.eos_token_id


def test_bundled_model_runs_exactly_like_hf_generate():
    prompt_text = "hp 30 enemy hp 80 distance far"
    for dtype, chunked_atol in ((torch.float32, 1e-4), (torch.float64, 1e-5)):
        loaded = load_model("bundled", dtype=dtype)
        assert loaded.num_layers >= 16
        prompt = loaded.tokenizer.encode(prompt_text)
        eos = loaded.tokenizer.eos_token_id
        oracle = hf_model(BUNDLED_MODEL_DIR, dtype)
        expected_tokens, expected_logits = hf_greedy_reference(oracle, prompt, 4, eos)
        for chunk, atol in ((None, 1e-5), (5, chunked_atol)):
            executor = Executor(loaded, prefill_chunk_tokens=chunk)
            state, logits = run_greedy(executor, prompt, 4, eos)
            assert state.generated == expected_tokens
            # float32 chunked prefill sums in another order: |diff| ~1e-5 on logits of ~13.
            torch.testing.assert_close(logits, expected_logits, atol=atol, rtol=0)
