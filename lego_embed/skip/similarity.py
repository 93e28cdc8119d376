"""Layer similarity map: how alike the hidden states entering the decoder layers are.

State ``i`` (for ``i < num_layers``) is the hidden state entering decoder layer ``i``; state
``num_layers`` is the one entering the final norm (the last layer's output). Entry ``[i, j]`` of
the map is the cosine similarity between states ``i`` and ``j`` of the same token, averaged over
every real (non-padding) token of the calibration data. ``[i, j + 1]`` therefore says how much
layers ``i..j`` change the residual stream: close to 1 means the span barely changes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lego_embed.model.decoder import Transformer
from lego_embed.skip.calibration import CalibrationBatch


@dataclass(frozen=True)
class SimilarityMap:
    """Mean cosine similarity between every pair of layer-input states.

    matrix: (num_layers + 1, num_layers + 1), unitless in [-1, 1]; tokens: real tokens averaged
    over; sequences: calibration sequences they came from."""

    matrix: np.ndarray
    tokens: int
    sequences: int

    @property
    def num_layers(self) -> int:
        return self.matrix.shape[0] - 1

    def span_similarity(self, first_layer: int, last_layer: int) -> float:
        """Similarity of the state entering ``first_layer`` and the one leaving ``last_layer``."""
        return float(self.matrix[first_layer, last_layer + 1])

    def layer_change(self, layer: int) -> float:
        """ShortGPT's block influence of one layer: 1 - cos(input, output), averaged over tokens."""
        return 1.0 - float(self.matrix[layer, layer + 1])


@torch.no_grad()
def record_states(
    model: Transformer, batch: CalibrationBatch, states: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Runs the full model on ``batch`` and returns, per requested state index, the hidden
    states of the real tokens as (real_tokens, hidden) in row-major token order."""
    bad = [s for s in states if not 0 <= s <= model.args.num_layers]
    if bad:
        raise ValueError(f"states {bad} out of range 0..{model.args.num_layers}")
    captured = model(batch.input_ids, batch.attention_mask, capture=set(states)).states
    real = batch.attention_mask.bool()
    return {state: hidden[real].float() for state, hidden in captured.items()}


@torch.no_grad()
def compute_similarity(model: Transformer, batches: Sequence[CalibrationBatch]) -> SimilarityMap:
    """Mean per-token cosine similarity between every pair of layer-input states."""
    num_states = model.args.num_layers + 1
    total = torch.zeros((num_states, num_states), dtype=torch.float64)
    tokens = 0
    sequences = 0
    for batch in batches:
        states = record_states(model, batch, range(num_states))
        unit = torch.stack([nn.functional.normalize(states[s], dim=-1) for s in range(num_states)])
        total += torch.einsum("snh,tnh->st", unit, unit).double()
        tokens += unit.shape[1]
        sequences += batch.input_ids.shape[0]
    if tokens == 0:
        raise ValueError("calibration batches hold no real tokens")
    mean = (total / tokens).numpy()
    return SimilarityMap((mean + mean.T) / 2.0, tokens, sequences)


def save_similarity(similarity: SimilarityMap, npy_path: Path, png_path: Path, title: str) -> None:
    """Writes the matrix as .npy and a heatmap PNG with every value printed in its cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    npy_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(npy_path, similarity.matrix)
    n = similarity.matrix.shape[0]
    labels = [f"in L{i}" for i in range(n - 1)] + ["final norm"]
    size = max(6.0, 0.55 * n)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(similarity.matrix, cmap="viridis", vmin=min(0.0, similarity.matrix.min()),
                      vmax=1.0)
    for i in range(n):
        for j in range(n):
            value = similarity.matrix[i, j]
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if value > 0.6 else "white")
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_title(f"{title}\nmean cosine similarity of layer inputs "
                 f"({similarity.tokens} tokens, {similarity.sequences} prompts)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    fig.tight_layout()
    fig.savefig(png_path, dpi=130)
    plt.close(fig)
