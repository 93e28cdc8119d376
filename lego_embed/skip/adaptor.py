"""The span adaptor: one small residual FFN block that stands in for a skipped span of layers.

Shape (LEGO's adaptor): ``x + down(act(up(rms_norm(x))))``.

- ``up`` maps ``hidden_size -> intermediate_size``, ``down`` maps back; both without bias, as
  in the Llama MLP the adaptor sits among.
- The intermediate size is small and grows with the span (``distill.default_adaptor_width``):
  ``hidden_size / 2`` per skipped layer, from 1x to 4x ``hidden_size``. At 1x the adaptor has
  ``2 * hidden_size**2`` weights, about a sixth of one Llama decoder layer with a 3x MLP, and it
  has no attention at all, so its cost stays a small fraction of the span it replaces.
- ``down`` starts at zero, so a fresh adaptor is exactly the identity: before distillation it
  behaves like plain skipping, and distillation can only move it towards the skipped span.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ADAPTOR_ACTIVATION = "silu"


@dataclass(frozen=True)
class AdaptorShape:
    """Sizes of one span adaptor. Sizes are element counts, ``rms_norm_eps`` is unitless."""

    hidden_size: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6

    @property
    def parameter_count(self) -> int:
        """Number of weights: the norm's scale plus the two projection matrices."""
        return self.hidden_size + 2 * self.hidden_size * self.intermediate_size


class SpanAdaptor(nn.Module):
    """Residual block replacing layers first..last of a span: maps the hidden state entering the
    span (batch, tokens, hidden) to an estimate of the hidden state leaving it, per token."""

    def __init__(self, shape: AdaptorShape) -> None:
        super().__init__()
        if shape.hidden_size <= 0 or shape.intermediate_size <= 0:
            raise ValueError(f"adaptor sizes must be positive, got {shape}")
        self.shape = shape
        self.norm = nn.RMSNorm(shape.hidden_size, eps=shape.rms_norm_eps)
        self.up = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.act = nn.SiLU()
        self.down = nn.Linear(shape.intermediate_size, shape.hidden_size, bias=False)
        nn.init.zeros_(self.down.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.down(self.act(self.up(self.norm(hidden))))

    @property
    def weight_bytes(self) -> int:
        """Bytes the adaptor's weights occupy in their current dtype."""
        return sum(p.numel() * p.element_size() for p in self.parameters())
