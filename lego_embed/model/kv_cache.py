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


class BatchCacheCall:
    """Stands in for a Hugging Face `Cache` during one attention call over a batch of requests.

    Holds the batch's past keys/values (right-padded to a common length); `update` (called by
    the HF attention module) keeps the new keys/values and returns past + new.
    """

    def __init__(self, keys: torch.Tensor | None, values: torch.Tensor | None) -> None:
        self.keys, self.values = keys, values
        self.new_keys: torch.Tensor | None = None
        self.new_values: torch.Tensor | None = None

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        self.new_keys, self.new_values = key_states, value_states
        if self.keys is None:
            return key_states, value_states
        return torch.cat([self.keys, key_states], dim=2), torch.cat([self.values, value_states], 2)
