"""Models with random weights made on the device: the shapes to time, with nothing to download.

`llama3_8b_args` is LEGO's model (Llama 3.1 8B: 32 layers, hidden 4096, 32 heads, 8 KV heads,
FFN 14336, vocab 128256, llama3 rope); `tiny_args` a shape the same code runs in seconds on a
CPU (the GPU check's rehearsal). Their adaptors are random too: they cost what a distilled
adaptor of that width costs, and say nothing about accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lego_embed.model.config import ModelArgs
from lego_embed.model.decoder import Transformer
from lego_embed.model.layer_plan import AdaptorStep, LayerPlan
from lego_embed.model.loading import LoadedModel
from lego_embed.skip.adaptor import AdaptorShape, SpanAdaptor
from lego_embed.skip.distill import default_adaptor_width

SKIP_FRACTIONS = (0.0, 0.125, 0.25, 0.375, 0.5)  # 0, 4, 8, 12, 16 of Llama-3-8B's 32 layers


def llama3_8b_args() -> ModelArgs:
    """Llama 3.1 8B's config.json, as its Hugging Face folder has it."""
    return ModelArgs.from_dict({
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192},
    }, source="llama3_8b_args")


def tiny_args() -> ModelArgs:
    """A Llama shape small enough to rehearse every step of the GPU check on a CPU."""
    return ModelArgs.from_dict({
        "model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 160,
        "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "eos_token_id": 1,
    }, source="tiny_args")


def synthetic_model(
    args: ModelArgs, device: str | torch.device, dtype: torch.dtype, seed: int = 0
) -> LoadedModel:
    """A LoadedModel of `args` with random weights (std 0.02) made directly on `device`; it has
    no tokenizer (drive it with token ids)."""
    device = torch.device(device)
    model = Transformer(args, device, dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    model.init_weights(generator=generator)
    model.eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=None, path=Path(f"synthetic:{args.family}"),
                       device=device, dtype=dtype)


def skip_plans(loaded: LoadedModel, seed: int = 0) -> dict[int, LayerPlan]:
    """Skipped layers -> a plan replacing a centred span of that many layers by a random adaptor
    of the width distillation would give it (one plan per SKIP_FRACTIONS entry)."""
    args = loaded.args
    generator = torch.Generator(device=loaded.device).manual_seed(seed)
    plans = {}
    for fraction in SKIP_FRACTIONS:
        skipped = round(fraction * args.num_layers)
        if skipped == 0:
            plans[0] = LayerPlan.full(args.num_layers)
            continue
        first = (args.num_layers - skipped) // 2
        shape = AdaptorShape(args.hidden_size, default_adaptor_width(args.hidden_size, skipped),
                             args.rms_norm_eps)
        adaptor = SpanAdaptor(shape).to(loaded.device, loaded.dtype)
        with torch.no_grad():
            for weight in (adaptor.up.weight, adaptor.down.weight):
                weight.normal_(0.0, 0.02, generator=generator)
        adaptor.eval().requires_grad_(False)
        steps = [*range(first), AdaptorStep(first, first + skipped - 1, adaptor),
                 *range(first + skipped, args.num_layers)]
        plans[skipped] = LayerPlan(tuple(steps)).validate(args.num_layers)
    return plans
