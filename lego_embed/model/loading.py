"""Loading a model from a local Hugging Face folder into our decoder (never downloads anything).

A folder needs `config.json` (a Llama, Qwen2 or Mistral config), its safetensors weights (one
file or shards with an index) and `tokenizer.json`. Nothing here imports transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lego_embed.errors import ModelNotFoundError
from lego_embed.model.config import ModelArgs
from lego_embed.model.decoder import Transformer
from lego_embed.model.tokenizer import Tokenizer
from lego_embed.model.weights import load_weights

BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "npc_model"


@dataclass
class LoadedModel:
    """Our decoder in eval mode with its tokenizer and the folder it came from.

    `max_context_tokens` is the longest sequence (prompt + generated tokens) the model supports.
    `tokenizer` is None only for synthetic models made for timing (`bench.synthetic`).
    """

    model: Transformer
    tokenizer: Tokenizer | None
    path: Path
    device: torch.device
    dtype: torch.dtype

    @property
    def args(self) -> ModelArgs:
        return self.model.args

    @property
    def family(self) -> str:
        return self.model.args.family

    @property
    def num_layers(self) -> int:
        return self.model.args.num_layers

    @property
    def max_context_tokens(self) -> int:
        return self.model.args.max_context_tokens


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Maps "bundled" to the packaged NPC model folder; any other value is a folder path."""
    if str(name_or_path) == "bundled":
        return BUNDLED_MODEL_DIR
    return Path(name_or_path).expanduser().resolve()


def load_model(
    name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Loads a Llama, Qwen2 or Mistral model and its tokenizer from a local folder.

    Raises ModelNotFoundError (no folder, config or weights), ModelConfigError /
    UnsupportedArchitectureError (config.json), ModelWeightsError (shards, names, shapes) or
    TokenizerMissingError, each naming what to fix."""
    path = resolve_model_path(name_or_path)
    if not path.is_dir():
        raise ModelNotFoundError(
            f"model folder {path} does not exist; pass a local Hugging Face model folder "
            "(config.json, model.safetensors, tokenizer.json) or 'bundled'"
        )
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{path} has no config.json; save the model with model.save_pretrained({str(path)!r})"
        )
    args = ModelArgs.from_folder(path)
    tokenizer = Tokenizer.from_folder(
        path, {"bos": args.bos_token_id, "eos": args.eos_token_id, "pad": args.pad_token_id}
    )
    device = torch.device(device)
    model = Transformer(args, device, dtype)
    load_weights(model, path)
    model.eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, device=device, dtype=dtype)
