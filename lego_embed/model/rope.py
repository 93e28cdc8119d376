"""Rotary position embeddings (RoPE) with the default, linear, llama3 and YaRN frequency sets.

Rotation is the "rotate half" layout that Hugging Face checkpoints of Llama, Qwen2 and Mistral
are stored in: the head's first and second halves are the two coordinates of each rotated
pair. Angles are computed in float32 from absolute positions and cast to the model's dtype.
The sine table carries the rotation's sign (its first half negated), so a rotation is
`x * cos + roll(x, half) * sin`: four kernels for queries and keys together.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lego_embed.model.config import RopeArgs


def inverse_frequencies(rope: RopeArgs, head_dim: int) -> torch.Tensor:
    """One inverse wavelength per rotated pair (head_dim / 2,), float32, radians per token."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    base = 1.0 / (rope.theta**exponents)
    if rope.rope_type == "default":
        return base
    if rope.rope_type == "linear":
        return base / rope.factor
    if rope.rope_type == "llama3":
        return _llama3(base, rope)
    return _yarn(rope, head_dim)


def _llama3(base: torch.Tensor, rope: RopeArgs) -> torch.Tensor:
    """Llama 3.1: long wavelengths scaled by 1/factor, short ones kept, a smooth band between."""
    context = rope.original_context_tokens
    low_freq_wavelen = context / rope.low_freq_factor
    high_freq_wavelen = context / rope.high_freq_factor
    wavelen = 2 * math.pi / base
    scaled = torch.where(wavelen > low_freq_wavelen, base / rope.factor, base)
    smooth = (context / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(rope: RopeArgs, head_dim: int) -> torch.Tensor:
    """YaRN: interpolated (1/factor) low frequencies, extrapolated high ones, a linear ramp
    between the pair indices where beta_slow and beta_fast rotations fit the original context."""

    def correction_dim(rotations: float) -> float:
        return (head_dim * math.log(rope.original_context_tokens / (rotations * 2 * math.pi))) / (
            2 * math.log(rope.theta)
        )

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # the ramp needs a non-empty interval
    pair = torch.arange(head_dim // 2, dtype=torch.float32)
    ramp = torch.clamp((pair - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    wavelengths = rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    extrapolated = 1.0 / wavelengths
    interpolated = 1.0 / (rope.factor * wavelengths)
    return interpolated * (1 - extrapolation_weight) + extrapolated * extrapolation_weight


class RotaryEmbedding(nn.Module):
    """cos and signed-sin tables for given absolute positions; `scale` multiplies both (YaRN's
    attention factor, 1 otherwise)."""

    def __init__(
        self, rope: RopeArgs, head_dim: int, device: torch.device | str | None = None
    ) -> None:
        super().__init__()
        frequencies = inverse_frequencies(rope, head_dim).to(device)
        self.register_buffer("inv_freq", frequencies, persistent=False)
        self.scale = rope.attention_factor

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (batch, tokens) -> cos, signed sin (batch, tokens, 1, head_dim) in
        `dtype`, ready to broadcast over the heads of a (batch, tokens, heads, head_dim)
        tensor."""
        angles = positions[..., None].float() * self.inv_freq.float()
        cos = torch.cat((angles, angles), dim=-1).cos() * self.scale
        sin = angles.sin() * self.scale
        signed_sin = torch.cat((-sin, sin), dim=-1)
        return cos[:, :, None].to(dtype), signed_sin[:, :, None].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotates x (batch, tokens, heads, head_dim) by the tables of `RotaryEmbedding`."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin
