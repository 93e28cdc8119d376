"""Plain reference execution of a layer plan with the Hugging Face model's own forward.

The executor runs a plan subtask by subtask; this module runs the same plan the simplest way
possible, by temporarily replacing the model's decoder-layer list with the plan's steps (kept
layers as they are, each adaptor wrapped as a "layer") and calling the model's ordinary
``forward``. It is what the skip tests compare the executor against, and what distillation,
the similarity map and perplexity evaluation use for whole-sequence passes (no KV cache).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lego_embed.model.layer_plan import AdaptorStep, LayerPlan, LayerStep, as_layer_plan


class _AdaptorAsLayer(nn.Module):
    """Lets an adaptor sit in a decoder-layer list: takes a layer's arguments, uses only the
    hidden state."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.module(hidden_states)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of a Llama/Qwen2/Mistral-style causal LM (``model.model.layers``)."""
    return model.model.layers


def skip_plan(
    num_layers: int, skipped: Sequence[int], module: nn.Module | None = None
) -> LayerPlan:
    """A plan that runs every layer except ``skipped``; each contiguous run of skipped layers
    becomes one AdaptorStep running ``module`` (``None``: the identity, i.e. plain removal)."""
    skipped_set = set(skipped)
    if not skipped_set <= set(range(num_layers)):
        raise ValueError(f"skipped layers {sorted(skipped_set)} not all within 0..{num_layers - 1}")
    if module is not None and len(_runs(sorted(skipped_set))) > 1:
        raise ValueError("one adaptor module can only replace one contiguous span")
    steps: list[LayerStep] = []
    for first, last in _runs(sorted(skipped_set)):
        replacement = module if module is not None else nn.Identity()
        steps.append(AdaptorStep(first, last, replacement))
    steps.extend(i for i in range(num_layers) if i not in skipped_set)
    steps.sort(key=lambda s: s if isinstance(s, int) else s.first_layer)
    return LayerPlan(tuple(steps)).validate(num_layers)


def _runs(layers: Sequence[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for layer in layers:
        if runs and runs[-1][1] == layer - 1:
            runs[-1] = (runs[-1][0], layer)
        else:
            runs.append((layer, layer))
    return runs


@contextmanager
def plan_applied(model: nn.Module, plan: LayerPlan | None) -> Iterator[nn.Module]:
    """Within the block, ``model``'s forward runs exactly the steps of ``plan``.

    The original layer list is restored on exit, also on error. Not thread-safe: use it only on
    a model no other thread is running."""
    original = decoder_layers(model)
    plan = as_layer_plan(plan, len(original))
    steps = [original[s] if isinstance(s, int) else _AdaptorAsLayer(s.module) for s in plan.steps]
    model.model.layers = nn.ModuleList(steps)
    try:
        yield model
    finally:
        model.model.layers = original


def plan_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    plan: LayerPlan | None,
) -> torch.Tensor:
    """Logits (batch, tokens, vocab) of a whole-sequence forward pass that runs ``plan``
    (``None``: every layer). No KV cache is kept."""
    with plan_applied(model, plan):
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits
