"""Reading a Hugging Face checkpoint's safetensors files into our Transformer.

A folder holds either one `model.safetensors` or shards listed by `model.safetensors.index.json`
(its `weight_map`: tensor name -> shard file). Tensors keep Hugging Face's names; `checkpoint_map`
says where each lands in our modules (the query/key/value and gate/up matrices are stacked into
the fused projections). Every expected tensor must be present with its exact shape, and no
unknown tensor may be left over: a checkpoint of another architecture is refused rather than
half-loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from lego_embed.errors import ModelNotFoundError, ModelWeightsError
from lego_embed.model.config import ModelArgs
from lego_embed.model.decoder import Transformer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)  # saved by old checkpoints; recomputed here


@dataclass(frozen=True)
class TensorTarget:
    """Where one checkpoint tensor goes: rows `start`..`start + rows` of parameter `param`
    (the whole parameter when it is not fused), and the tensor's expected shape."""

    param: str
    start: int
    shape: tuple[int, ...]


def checkpoint_map(args: ModelArgs) -> dict[str, TensorTarget]:
    """Hugging Face tensor name -> TensorTarget, for every tensor the checkpoint must hold."""
    hidden, inter = args.hidden_size, args.intermediate_size
    q_rows, kv_rows = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
    targets = {
        "model.embed_tokens.weight": TensorTarget("embed.weight", 0, (args.vocab_size, hidden)),
        "model.norm.weight": TensorTarget("norm.weight", 0, (hidden,)),
    }
    if not args.tie_word_embeddings:
        targets["lm_head.weight"] = TensorTarget("output.weight", 0, (args.vocab_size, hidden))
    for i in range(args.num_layers):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        attn, mlp = ours + "attention.", ours + "feed_forward."
        targets[hf + "input_layernorm.weight"] = TensorTarget(
            ours + "attention_norm.weight", 0, (hidden,))
        targets[hf + "post_attention_layernorm.weight"] = TensorTarget(
            ours + "ffn_norm.weight", 0, (hidden,))
        starts = {"q_proj": (0, q_rows), "k_proj": (q_rows, kv_rows),
                  "v_proj": (q_rows + kv_rows, kv_rows)}
        for name, (start, rows) in starts.items():
            targets[f"{hf}self_attn.{name}.weight"] = TensorTarget(
                attn + "wqkv.weight", start, (rows, hidden))
            if args.qkv_bias:
                targets[f"{hf}self_attn.{name}.bias"] = TensorTarget(
                    attn + "wqkv.bias", start, (rows,))
        targets[hf + "self_attn.o_proj.weight"] = TensorTarget(
            attn + "wo.weight", 0, (hidden, q_rows))
        if args.out_bias:
            targets[hf + "self_attn.o_proj.bias"] = TensorTarget(attn + "wo.bias", 0, (hidden,))
        for name, start in (("gate_proj", 0), ("up_proj", inter)):
            targets[f"{hf}mlp.{name}.weight"] = TensorTarget(mlp + "w13.weight", start,
                                                             (inter, hidden))
            if args.mlp_bias:
                targets[f"{hf}mlp.{name}.bias"] = TensorTarget(mlp + "w13.bias", start, (inter,))
        targets[hf + "mlp.down_proj.weight"] = TensorTarget(mlp + "w2.weight", 0, (hidden, inter))
        if args.mlp_bias:
            targets[hf + "mlp.down_proj.bias"] = TensorTarget(mlp + "w2.bias", 0, (hidden,))
    return targets


def shard_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (raises ModelNotFoundError /
    ModelWeightsError when the folder has no weights or the index names a missing shard)."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ModelWeightsError(
                f"{index} is not a safetensors index (needs a 'weight_map' object: {error}); "
                "save the model again with model.save_pretrained"
            ) from error
        files = {name: folder / shard for name, shard in weight_map.items()}
        missing = sorted({p.name for p in files.values() if not p.is_file()})
        if missing:
            raise ModelWeightsError(
                f"{folder} lacks shard(s) {', '.join(missing)} listed in {INDEX_FILE}; copy "
                "every shard of the checkpoint into the folder"
            )
        return files
    single = folder / SINGLE_FILE
    if single.is_file():
        with _open(single) as handle:
            return {name: single for name in handle.keys()}  # noqa: SIM118 (not a dict)
    hint = " (pytorch_model.bin found: convert it with save_pretrained(safe_serialization=True))"
    raise ModelNotFoundError(
        f"{folder} has no {SINGLE_FILE} or {INDEX_FILE}"
        f"{hint if (folder / 'pytorch_model.bin').is_file() else ''}; the decoder reads "
        "safetensors checkpoints"
    )


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError) as error:
        raise ModelWeightsError(
            f"cannot read {path} ({error}); the file is damaged or truncated: copy it again"
        ) from error


def _by_file(files: dict[str, Path]) -> Iterator[tuple[Path, list[str]]]:
    grouped: dict[Path, list[str]] = {}
    for name, path in files.items():
        grouped.setdefault(path, []).append(name)
    yield from grouped.items()


@torch.no_grad()
def load_weights(model: Transformer, folder: Path) -> None:
    """Copies every checkpoint tensor of `folder` into `model` (converted to the model's dtype
    and device), checking names and shapes."""
    targets = checkpoint_map(model.args)
    files = shard_files(folder)
    names = {n for n in files if not n.endswith(IGNORED_SUFFIXES)}
    if model.args.tie_word_embeddings:
        names.discard("lm_head.weight")  # some tied checkpoints save the shared matrix twice
    missing = sorted(set(targets) - names)
    unexpected = sorted(names - set(targets))
    if missing or unexpected:
        raise ModelWeightsError(
            f"{folder}: the checkpoint does not match config.json ("
            + "; ".join(filter(None, [
                f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}" if missing
                else "",
                f"{len(unexpected)} unknown tensor(s), e.g. {', '.join(unexpected[:3])}"
                if unexpected else "",
            ]))
            + "); use the config.json saved with these weights"
        )
    params = dict(model.named_parameters())
    for path, file_names in _by_file({n: files[n] for n in targets}):
        with _open(path) as handle:
            for name in file_names:
                target = targets[name]
                tensor = handle.get_tensor(name)
                if tuple(tensor.shape) != target.shape:
                    raise ModelWeightsError(
                        f"{path.name}: tensor {name} has shape {tuple(tensor.shape)}, config.json "
                        f"implies {target.shape}; the weights and config.json are from "
                        "different models"
                    )
                rows = target.shape[0]
                params[target.param][target.start : target.start + rows].copy_(tensor)
