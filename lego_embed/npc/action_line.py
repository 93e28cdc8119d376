"""The `ChoiceThenLine` output spec's sampler: an action from the trie, the forced separator,
then a line, in one greedy generation.

The generated tokens are always `action tokens + separator tokens + line tokens [+ EOS]`:
while the action is open only tokens that continue an allowed action (or, right after a
complete action, the separator's first token) may be chosen; the separator's tokens are forced;
the line is free text as in `Line`. So the answer parses every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lego_embed.errors import InvalidActionSetError
from lego_embed.npc.actions import ActionTrie
from lego_embed.npc.line_sampler import greedy_line_token, line_finished
from lego_embed.npc.line_text import LineText
from lego_embed.npc.output_spec import ANSWER_PREFIX, ChoiceThenLine


@dataclass(frozen=True)
class _Parsed:
    """Where `generated` stands: the action's tokens so far, the separator tokens so far, and
    the line's tokens (complete action: `action` is set)."""

    action_ids: tuple[int, ...]
    action: str | None
    separator_done: int
    line_ids: tuple[int, ...]


class ChoiceThenLineSampler:
    """TokenSampler for `ChoiceThenLine` (see the module docstring)."""

    def __init__(self, tokenizer, spec: ChoiceThenLine) -> None:
        self.eos_token_id = tokenizer.eos_token_id
        self.trie = ActionTrie(tokenizer, spec.actions, self.eos_token_id)
        self.separator_ids = tuple(tokenizer.encode(spec.separator, add_special_tokens=False))
        if not self.separator_ids:
            raise InvalidActionSetError(f"the separator {spec.separator!r} encodes to no token")
        self._check_separator(tokenizer, spec)
        self.max_tokens = spec.max_tokens
        action_tokens = self.trie.max_tokens - 1  # the trie counts the closing EOS
        self.first_answer_tokens = action_tokens + len(self.separator_ids) + 1
        self.max_new_tokens = action_tokens + len(self.separator_ids) + spec.max_tokens
        self.text = LineText(tokenizer, spec.stop)

    def _check_separator(self, tokenizer, spec: ChoiceThenLine) -> None:
        first = self.separator_ids[0]
        for action in spec.actions:
            ids = tokenizer.encode(ANSWER_PREFIX + action, add_special_tokens=False)
            for end in range(1, len(ids)):
                if ids[end] == first and self.trie.complete(ids[:end]) is not None:
                    raise InvalidActionSetError(
                        f"action {action!r} starts with another action followed by the "
                        f"separator {spec.separator!r}; rename one of them"
                    )

    def _parse(self, generated: Sequence[int]) -> _Parsed:
        first = self.separator_ids[0]
        for index, token in enumerate(generated):
            prefix = generated[:index]
            action = self.trie.complete(prefix) if token == first else None
            if action is not None:
                rest = tuple(generated[index:])
                done = 0
                while done < min(len(rest), len(self.separator_ids)) and (
                        rest[done] == self.separator_ids[done]):
                    done += 1
                return _Parsed(tuple(prefix), action, done, rest[done:])
        return _Parsed(tuple(generated), None, 0, ())

    def next_token(self, logits: torch.Tensor, generated: Sequence[int]) -> int:
        parsed = self._parse(generated)
        if parsed.action is None:
            allowed = self.trie.continuations(parsed.action_ids)
            if self.trie.complete(parsed.action_ids) is not None:
                allowed.append(self.separator_ids[0])
            if len(allowed) == 1:
                return allowed[0]
            index = torch.as_tensor(allowed, device=logits.device)
            return allowed[int(torch.argmax(logits.index_select(-1, index)))]
        if parsed.separator_done < len(self.separator_ids):
            return self.separator_ids[parsed.separator_done]
        return greedy_line_token(logits, parsed.line_ids, self.eos_token_id)

    def finished(self, generated: Sequence[int]) -> bool:
        parsed = self._parse(generated)
        if parsed.action is None or parsed.separator_done < len(self.separator_ids):
            return False
        return line_finished(self.text, parsed.line_ids, self.eos_token_id, self.max_tokens)

    def action(self, generated: Sequence[int]) -> str | None:
        """The chosen action as soon as only one is possible (before the line starts)."""
        parsed = self._parse(generated)
        return parsed.action or self.trie.action_of(parsed.action_ids)

    def line_ids(self, generated: Sequence[int]) -> list[int]:
        ids = list(self._parse(generated).line_ids)
        return ids[:-1] if ids and ids[-1] == self.eos_token_id else ids
