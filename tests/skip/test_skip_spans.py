"""Span choice from a similarity map: most similar contiguous span, never layer 0; ShortGPT's
lowest-influence layers."""

from __future__ import annotations

import numpy as np
import pytest
from skip_helpers import NUM_LAYERS, task_batches

from lego_embed.skip.similarity import SimilarityMap, compute_similarity
from lego_embed.skip.spans import Span, choose_span, choose_spans, lowest_influence_layers


def _map_from_layer_changes(changes: list[float]) -> SimilarityMap:
    """A similarity map where state i and j are as similar as 1 - (total change between them)."""
    cumulative = np.concatenate([[0.0], np.cumsum(changes)])
    matrix = 1.0 - np.abs(cumulative[:, None] - cumulative[None, :])
    return SimilarityMap(matrix, tokens=100, sequences=10)


def test_choose_span_picks_the_most_similar_contiguous_span():
    changes = [0.5, 0.1, 0.02, 0.01, 0.03, 0.2, 0.015, 0.3]
    similarity = _map_from_layer_changes(changes)
    assert choose_span(similarity, 1) == Span(3, 3)
    assert choose_span(similarity, 2) == Span(2, 3)
    assert choose_span(similarity, 3) == Span(2, 4)
    assert choose_span(similarity, 7) == Span(1, 7)


def test_choose_span_never_includes_layer_zero_even_when_it_changes_least():
    changes = [0.0, 0.0, 0.5, 0.5, 0.5]
    similarity = _map_from_layer_changes(changes)
    span = choose_span(similarity, 2)
    assert span.first_layer >= 1
    assert span == Span(1, 2)  # 0..1 would be "free", but layer 0 always runs


def test_choose_spans_and_budget_errors():
    similarity = _map_from_layer_changes([0.3, 0.1, 0.1, 0.1, 0.2])
    spans = choose_spans(similarity, [1, 2, 4])
    assert {k: s.skipped_layers for k, s in spans.items()} == {1: 1, 2: 2, 4: 4}
    assert spans[4] == Span(1, 4)
    for bad in (0, 5, -1):
        with pytest.raises(ValueError):
            choose_span(similarity, bad)


def test_lowest_influence_layers_are_the_least_changing_ones_in_order():
    similarity = _map_from_layer_changes([0.5, 0.1, 0.02, 0.4, 0.03, 0.2])
    assert lowest_influence_layers(similarity, 2) == [2, 4]
    assert lowest_influence_layers(similarity, 3) == [1, 2, 4]


def test_spans_from_a_real_model_map(tiny_loaded):
    similarity = compute_similarity(tiny_loaded.model, task_batches(tiny_loaded.tokenizer, 24, 1))
    for k in range(1, NUM_LAYERS):
        span = choose_span(similarity, k)
        assert span.skipped_layers == k and span.first_layer >= 1 and span.last_layer < NUM_LAYERS
        best = max(
            similarity.span_similarity(first, first + k - 1)
            for first in range(1, NUM_LAYERS - k + 1)
        )
        assert similarity.span_similarity(span.first_layer, span.last_layer) == best
