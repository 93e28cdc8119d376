"""The `Line` output spec's sampler: greedy free text, streamed, ended by EOS, a stop string or
its token limit."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lego_embed.npc.line_text import LineText
from lego_embed.npc.output_spec import Line


def greedy_line_token(logits: torch.Tensor, line_ids: Sequence[int], eos_token_id: int | None
                      ) -> int:
    """Arg-max, except that a line never ends before its first token."""
    if not line_ids and eos_token_id is not None:
        logits = logits.clone()
        logits[eos_token_id] = -torch.inf
    return int(torch.argmax(logits))


def line_finished(line: LineText, generated_line: Sequence[int], eos_token_id: int | None,
                  max_tokens: int) -> bool:
    """Updates the line's text and says whether the line is over (EOS, stop string, limit)."""
    if generated_line and eos_token_id is not None and generated_line[-1] == eos_token_id:
        line.update(generated_line[:-1])
        return True
    line.update(generated_line)
    return line.stopped or len(generated_line) >= max_tokens


class LineSampler:
    """TokenSampler for `Line`: every generated token belongs to the line (EOS excluded)."""

    def __init__(self, tokenizer, spec: Line) -> None:
        self.eos_token_id = tokenizer.eos_token_id
        self.max_tokens = spec.max_tokens
        self.max_new_tokens = spec.max_tokens
        self.first_answer_tokens = 1
        self.text = LineText(tokenizer, spec.stop)

    def next_token(self, logits: torch.Tensor, generated: Sequence[int]) -> int:
        return greedy_line_token(logits, generated, self.eos_token_id)

    def finished(self, generated: Sequence[int]) -> bool:
        return line_finished(self.text, generated, self.eos_token_id, self.max_tokens)

    def action(self, generated: Sequence[int]) -> str | None:
        return None

    def line_ids(self, generated: Sequence[int]) -> list[int]:
        ids = list(generated)
        return ids[:-1] if ids and ids[-1] == self.eos_token_id else ids
