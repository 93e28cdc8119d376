"""Physical floors of subtasks: the least time the arithmetic or the memory traffic can take.

A subtask's work is its floating-point operations and the bytes it must move between memory
and the chips (weights read once per call, keys and values read and written, activations
ignored: they are small next to weights at decode and fit in cache at prefill). Its floor on a
device is `max(flops / peak FLOP/s, bytes / peak bytes/s)`; measured time over that floor says
how far from the hardware a subtask runs (1.0 = at the limit).
"""

from __future__ import annotations

from dataclasses import dataclass

from lego_embed.model.config import ModelArgs
from lego_embed.model.subtask import DECODE, Subtask, SubtaskKind

# Dense bf16 tensor-core FLOP/s and HBM bytes/s from NVIDIA's datasheets, by device-name match.
DATASHEET_PEAKS = (
    ("H200", 989e12, 4.8e12),
    ("H100 NVL", 835e12, 3.9e12),
    ("H100 PCIe", 756e12, 2.0e12),
    ("H100", 989e12, 3.35e12),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", 312e12, 2.039e12),
)


@dataclass(frozen=True)
class DevicePeaks:
    """What a device can do at most: flops_per_s (bf16, dense), bytes_per_s (memory); source
    names where the numbers come from (a datasheet, or a measurement on the device)."""

    flops_per_s: float
    bytes_per_s: float
    source: str

    @classmethod
    def datasheet(cls, device_name: str) -> DevicePeaks | None:
        """The datasheet peaks of a known GPU (None for others, e.g. a CPU)."""
        for key, flops, bandwidth in DATASHEET_PEAKS:
            if key in device_name:
                return cls(flops, bandwidth, f"datasheet: {key}")
        return None

    def floor_us(self, work: Work) -> float:
        """The subtask's least possible duration on this device (microseconds)."""
        return max(work.flops / self.flops_per_s, work.bytes / self.bytes_per_s) * 1e6


@dataclass(frozen=True)
class Work:
    """Floating-point operations and bytes moved by one subtask."""

    flops: float
    bytes: float

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.bytes + other.bytes)


def attended_pairs(queries: int, context: int) -> int:
    """Query-key pairs of causal attention: `queries` new tokens at the end of `context`."""
    past = context - queries
    return queries * past + queries * (queries + 1) // 2


def subtask_work(
    args: ModelArgs, subtask: Subtask, element_bytes: int, adaptor_width: int = 0
) -> Work:
    """Work of one subtask of a model of shape `args` whose weights and caches take
    `element_bytes` per element. `subtask.tokens` counts every query token of a batch; a
    decode subtask is one token per request (`tokens` requests). ADAPTOR needs its width."""
    hidden, heads, kv_heads, head_dim = (args.hidden_size, args.num_heads, args.num_kv_heads,
                                         args.head_dim)
    tokens, context = subtask.tokens, subtask.context_tokens
    kind = subtask.kind
    if kind is SubtaskKind.EMBED:
        return Work(0.0, tokens * hidden * element_bytes)
    if kind is SubtaskKind.HEAD:
        rows = tokens if subtask.phase == DECODE else 1
        return Work(2.0 * rows * hidden * args.vocab_size,
                    args.vocab_size * hidden * element_bytes)
    if kind is SubtaskKind.ADAPTOR:
        weights = 2 * hidden * adaptor_width
        return Work(2.0 * tokens * weights, weights * element_bytes)
    work = Work(0.0, 0.0)
    if kind in (SubtaskKind.ATTENTION, SubtaskKind.LAYER):
        weights = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden
        requests = tokens if subtask.phase == DECODE else 1
        queries = tokens // requests
        pairs = requests * attended_pairs(queries, context)
        kv_bytes = requests * 2 * kv_heads * head_dim * context * element_bytes
        work += Work(2.0 * tokens * weights + 4.0 * pairs * heads * head_dim,
                     weights * element_bytes + kv_bytes)
    if kind in (SubtaskKind.FFN, SubtaskKind.LAYER):
        weights = 3 * hidden * args.intermediate_size
        work += Work(2.0 * tokens * weights, weights * element_bytes)
    return work
