"""Per-layer key/value caches that record which absolute positions each layer ran for."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerKV:
    """Keys and values one decoder layer holds, shape (1, kv_heads, n, head_dim), and their
    absolute token positions (n,), ascending. Immutable: appending returns a new LayerKV, so a
    shared prefix is never modified by the requests that start from it."""

    keys: torch.Tensor | None
    values: torch.Tensor | None
    positions: torch.Tensor

    @classmethod
    def empty(cls, device: torch.device) -> LayerKV:
        return cls(None, None, torch.empty(0, dtype=torch.long, device=device))

    def __len__(self) -> int:
        return int(self.positions.numel())

    def appended(
        self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor
    ) -> LayerKV:
        if self.keys is None:
            return LayerKV(keys, values, positions)
        return LayerKV(
            torch.cat([self.keys, keys], dim=2),
            torch.cat([self.values, values], dim=2),
            torch.cat([self.positions, positions]),
        )

    def truncated(self, num_positions: int) -> LayerKV:
        """The entries for absolute positions < num_positions."""
        keep = int((self.positions < num_positions).sum())
        if keep == len(self):
            return self
        if keep == 0:
            return LayerKV.empty(self.positions.device)
        return LayerKV(self.keys[:, :, :keep], self.values[:, :, :keep], self.positions[:keep])


@dataclass(frozen=True)
class PrefixCache:
    """A static prompt part prefilled once: its token ids and every layer's KV cache.

    Requests started with it copy references to these tensors and never mutate them.
    """

    token_ids: tuple[int, ...]
    layers: tuple[LayerKV, ...]
