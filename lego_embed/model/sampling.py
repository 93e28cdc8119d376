"""Token samplers: how the executor's HEAD subtask turns logits into the next token."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


class TokenSampler(Protocol):
    """Chooses the next token from the last position's logits, and says when a request is done.

    A sampler may also expose `max_new_tokens: int`; the executor then rejects prompts whose
    length plus that exceeds the model's context (PromptTooLongError).
    """

    def next_token(self, logits: torch.Tensor, generated: Sequence[int]) -> int:
        """`logits` is 1-D (vocab,), float32; `generated` the tokens chosen so far."""
        ...

    def finished(self, generated: Sequence[int]) -> bool: ...


@dataclass
class GreedySampler:
    """Arg-max decoding; stops after `max_new_tokens` tokens or at `eos_token_id`."""

    eos_token_id: int | None
    max_new_tokens: int

    def next_token(self, logits: torch.Tensor, generated: Sequence[int]) -> int:
        return int(torch.argmax(logits))

    def finished(self, generated: Sequence[int]) -> bool:
        if len(generated) >= self.max_new_tokens:
            return True
        return (
            self.eos_token_id is not None
            and bool(generated)
            and (generated[-1] == self.eos_token_id)
        )
