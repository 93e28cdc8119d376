"""Loading a causal LM from a local Hugging Face folder (never downloads anything)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lego_embed.errors import (
    ModelNotFoundError,
    TokenizerMissingError,
    UnsupportedArchitectureError,
)

SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral")
BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "npc_model"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


@dataclass
class LoadedModel:
    """A causal LM in eval mode with its tokenizer.

    `max_context_tokens` is the longest sequence (prompt + generated tokens) the model supports.
    """

    model: torch.nn.Module
    tokenizer: object
    path: Path
    family: str
    max_context_tokens: int
    device: torch.device
    dtype: torch.dtype

    @property
    def num_layers(self) -> int:
        return len(self.model.model.layers)


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Maps "bundled" to the packaged NPC model folder; any other value is a folder path."""
    if str(name_or_path) == "bundled":
        return BUNDLED_MODEL_DIR
    return Path(name_or_path).expanduser().resolve()


def _check_folder(path: Path) -> str:
    """Validates the folder layout and returns the model family (config.model_type)."""
    if not path.is_dir():
        raise ModelNotFoundError(
            f"model folder {path} does not exist; pass a local Hugging Face model folder "
            "(config.json, model.safetensors, tokenizer.json) or 'bundled'"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(
            f"{path} has no config.json; save the model with model.save_pretrained({str(path)!r})"
        )
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelNotFoundError(
            f"{path} has no weights (looked for {', '.join(WEIGHT_FILES)}); "
            "save them with model.save_pretrained or copy the safetensors file in"
        )
    family = json.loads(config_file.read_text()).get("model_type", "<missing>")
    if family not in SUPPORTED_FAMILIES:
        raise UnsupportedArchitectureError(
            f"{path} holds a '{family}' model; the partitioned executor supports "
            f"{', '.join(SUPPORTED_FAMILIES)} (config.json 'model_type')"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise TokenizerMissingError(
            f"{path} has no tokenizer (looked for {', '.join(TOKENIZER_FILES)}); "
            f"save it next to the model with tokenizer.save_pretrained({str(path)!r})"
        )
    return family


def _tokenizer_class_name(path: Path) -> str | None:
    config_file = path / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    return json.loads(config_file.read_text()).get("tokenizer_class")


def load_model(
    name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Loads a Llama, Qwen2 or Mistral causal LM and its fast tokenizer from a local folder."""
    path = resolve_model_path(name_or_path)
    family = _check_folder(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    # A folder saved with a generic tokenizer class gets exactly its tokenizer.json back, rather
    # than the family's default tokenizer class that AutoTokenizer would pick from model_type.
    tokenizer_class = AutoTokenizer
    if _tokenizer_class_name(path) in GENERIC_TOKENIZER_CLASSES:
        tokenizer_class = PreTrainedTokenizerFast
    try:
        tokenizer = tokenizer_class.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise TokenizerMissingError(
            f"cannot load the tokenizer in {path} ({error}); save a fast tokenizer there "
            "with tokenizer.save_pretrained"
        ) from error
    device = torch.device(device)
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype, attn_implementation="sdpa"
        )
    except (OSError, ValueError, SafetensorError) as error:
        raise ModelNotFoundError(
            f"cannot load the weights in {path} ({error}); the files are damaged or do not "
            "match config.json: save the model again with model.save_pretrained"
        ) from error
    model.to(device).eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        path=path,
        family=family,
        max_context_tokens=int(model.config.max_position_embeddings),
        device=device,
        dtype=dtype,
    )
