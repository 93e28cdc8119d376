"""Calibration data for similarity maps, distillation and perplexity: token sequences made of a
prompt and the answer the model should give, batched with right padding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CalibrationExample:
    """One calibration sequence: prompt tokens followed by answer tokens (token ids)."""

    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("a calibration example needs at least one prompt token")


@dataclass(frozen=True)
class CalibrationBatch:
    """Right-padded batch of calibration sequences.

    input_ids, attention_mask, answer_mask: (batch, tokens). attention_mask is 1 on real
    tokens; answer_mask is 1 on the positions whose next-token prediction is an answer token
    (the last prompt token and every answer token but the last), i.e. where the model decides.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor

    @property
    def real_tokens(self) -> int:
        """Number of non-padding tokens in the batch."""
        return int(self.attention_mask.sum())


def make_batches(
    examples: Sequence[CalibrationExample], batch_size: int, pad_token_id: int
) -> list[CalibrationBatch]:
    """Groups examples (in order) into right-padded batches of at most ``batch_size``."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not examples:
        raise ValueError("no calibration examples: give at least one prompt")
    batches = []
    for start in range(0, len(examples), batch_size):
        group = examples[start : start + batch_size]
        width = max(len(e.prompt_ids) + len(e.answer_ids) for e in group)
        ids = torch.full((len(group), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(group), width), dtype=torch.long)
        answer = torch.zeros((len(group), width), dtype=torch.long)
        for row, example in enumerate(group):
            tokens = list(example.prompt_ids) + list(example.answer_ids)
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            attention[row, : len(tokens)] = 1
            if example.answer_ids:
                answer[row, len(example.prompt_ids) - 1 : len(tokens) - 1] = 1
        batches.append(CalibrationBatch(ids, attention, answer))
    return batches
