"""Which layers to skip for a budget of k layers, chosen from a similarity map.

LEGO's choice (``choose_span``): the contiguous span of k layers whose input and output are the
most similar, so a small adaptor has the least to reproduce. Layer 0 is never part of a span:
it turns raw token embeddings into the residual stream's working representation, so its input
and output are the least similar pair in every model we measured (see the heatmap) and the
layers after it cannot read raw embeddings; skipping it breaks the model whatever replaces it.

ShortGPT's choice (``lowest_influence_layers``), a baseline: the k individual layers with the
lowest input/output change, not necessarily contiguous, each removed without replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lego_embed.skip.similarity import SimilarityMap


@dataclass(frozen=True)
class Span:
    """Contiguous decoder layers first_layer..last_layer (inclusive) replaced as one unit."""

    first_layer: int
    last_layer: int

    @property
    def skipped_layers(self) -> int:
        return self.last_layer - self.first_layer + 1

    def layers(self) -> list[int]:
        return list(range(self.first_layer, self.last_layer + 1))


def choose_span(similarity: SimilarityMap, skipped_layers: int) -> Span:
    """The span of ``skipped_layers`` contiguous layers, never containing layer 0, with the
    highest similarity between its input and its output (ties: the earliest span)."""
    num_layers = similarity.num_layers
    if not 1 <= skipped_layers <= num_layers - 1:
        raise ValueError(
            f"a skip budget must be 1..{num_layers - 1} layers for a {num_layers}-layer model "
            f"(layer 0 always runs), got {skipped_layers}"
        )
    candidates = [
        Span(first, first + skipped_layers - 1)
        for first in range(1, num_layers - skipped_layers + 1)
    ]
    return max(candidates, key=lambda s: similarity.span_similarity(s.first_layer, s.last_layer))


def choose_spans(similarity: SimilarityMap, budgets: Sequence[int]) -> dict[int, Span]:
    """``choose_span`` for each budget, keyed by the number of skipped layers."""
    return {k: choose_span(similarity, k) for k in budgets}


def lowest_influence_layers(similarity: SimilarityMap, skipped_layers: int) -> list[int]:
    """ShortGPT: the ``skipped_layers`` layers with the lowest block influence
    (1 - cos(input, output)), in increasing layer order."""
    num_layers = similarity.num_layers
    if not 1 <= skipped_layers <= num_layers - 1:
        raise ValueError(f"a skip budget must be 1..{num_layers - 1}, got {skipped_layers}")
    ranked = sorted(range(num_layers), key=similarity.layer_change)
    return sorted(ranked[:skipped_layers])
