"""Subtasks: the units of work the executor runs one at a time, and their measured durations."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class SubtaskKind(str, Enum):
    """What one subtask computes.

    EMBED: token embedding (prefill). ATTENTION / FFN: norm + attention / MLP + residual of one
    layer (prefill). LAYER: a whole decoder layer (decode). ADAPTOR: one module replacing a span
    of layers. HEAD: final norm, lm_head and sampling (plus, in decode, embedding the new token).
    FFN_SLICE: part `part` of `parts` of one layer's FFN block, split over its intermediate
    dimension (`Executor.split_next`); the last part adds the sum to the residual.
    """

    EMBED = "embed"
    ATTENTION = "attention"
    FFN = "ffn"
    LAYER = "layer"
    ADAPTOR = "adaptor"
    HEAD = "head"
    FFN_SLICE = "ffn_slice"


PREFILL = "prefill"
DECODE = "decode"


@dataclass(frozen=True)
class Subtask:
    """One unit of work.

    `first_layer`..`last_layer` are inclusive decoder-layer indices (-1 for EMBED and HEAD);
    `tokens` is the number of query tokens processed; `context_tokens` the number of key/value
    positions attended (for FFN, ADAPTOR, EMBED and HEAD: the positions seen so far).
    `part` / `parts`: which piece of a split FFN block this is (0 / 1: not split).
    """

    kind: SubtaskKind
    phase: str
    first_layer: int
    last_layer: int
    tokens: int
    context_tokens: int
    part: int = 0
    parts: int = 1


@dataclass(frozen=True)
class SubtaskTiming:
    """A subtask and how long it took to run, in nanoseconds (GPU time on CUDA)."""

    subtask: Subtask
    duration_ns: int
