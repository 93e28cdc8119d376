"""Plain reference execution of a layer plan: our decoder's whole-sequence forward.

The executor runs a plan subtask by subtask; `plan_logits` runs the same plan the simplest way,
one whole-sequence pass with no KV cache (`Transformer.forward`). Distillation, the similarity
map and perplexity evaluation use it for whole-sequence passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lego_embed.model.decoder import Transformer
from lego_embed.model.layer_plan import AdaptorStep, LayerPlan, LayerStep


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


def plan_logits(
    model: Transformer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    plan: LayerPlan | None,
) -> torch.Tensor:
    """Logits (batch, tokens, vocab) of a whole-sequence forward pass that runs ``plan``
    (``None``: every layer). No KV cache is kept."""
    return model(input_ids, attention_mask, plan).logits
