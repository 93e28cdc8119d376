"""Hugging Face transformers as the tests' oracle: the same folders run by HF's own model code.

Only tests import this module; `lego_embed` never imports transformers. The oracle models are
loaded from the folder our loader read, so both sides see the same config and weights.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedTokenizerFast

from lego_embed.model.layer_plan import LayerPlan, as_layer_plan


@functools.lru_cache(maxsize=16)
def hf_model(folder: Path, dtype: torch.dtype = torch.float32, attention: str = "sdpa"):
    """The folder's model in HF's own code, eval mode (cached per folder, dtype, attention)."""
    model = AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, dtype=dtype, attn_implementation=attention
    )
    return model.eval()


def hf_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """The folder's tokenizer.json as HF's fast tokenizer loads it."""
    return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)


def hf_greedy_reference(model, prompt: list[int], max_new_tokens: int, eos_token_id):
    """`model.generate(do_sample=False)` tokens and the logits generate chose each one from."""
    with torch.no_grad():
        output = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = output.sequences[0, len(prompt) :].tolist()
    return tokens, torch.stack([step[0] for step in output.logits]).float()


class _AdaptorAsLayer(nn.Module):
    """Lets an adaptor sit in HF's decoder-layer list: takes a layer's arguments, uses only the
    hidden state."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.module(hidden_states)


@contextmanager
def hf_plan_applied(model, plan: LayerPlan | None) -> Iterator[Any]:
    """Within the block, the HF model's forward runs exactly the steps of `plan`: its layer
    list is replaced by the kept layers and the adaptors (restored on exit)."""
    original = model.model.layers
    plan = as_layer_plan(plan, len(original))
    model.model.layers = nn.ModuleList(
        original[s] if isinstance(s, int) else _AdaptorAsLayer(s.module) for s in plan.steps
    )
    try:
        yield model
    finally:
        model.model.layers = original


def hf_plan_run(model, prompt: list[int], plans: list) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens and logits with HF's own KV cache, when pass i (0: the prompt, then one per
    token) runs plans[i]; a skipped layer writes nothing into the cache."""
    cache = DynamicCache(config=model.config)
    # transformers 5.24 renamed the forward's cache argument; pass whichever this one takes
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else (
        "past_key_values"
    )
    tokens, logits = [], []
    with torch.no_grad():
        for index, plan in enumerate(plans):
            if index == 0:
                ids, positions = torch.tensor([prompt]), None
            else:
                ids = torch.tensor([[tokens[-1]]])
                positions = torch.tensor([[len(prompt) + index - 1]])
            with hf_plan_applied(model, plan):
                out = model(input_ids=ids, use_cache=True, position_ids=positions,
                            **{cache_arg: cache})
            logits.append(out.logits[0, -1].float())
            tokens.append(int(out.logits[0, -1].argmax()))
    return tokens, torch.stack(logits)


def hf_plan_logits(model, input_ids: torch.Tensor, plan: LayerPlan | None) -> torch.Tensor:
    """Whole-sequence logits of the HF model running `plan`, no cache."""
    with torch.no_grad(), hf_plan_applied(model, plan):
        return model(input_ids=input_ids, use_cache=False).logits
