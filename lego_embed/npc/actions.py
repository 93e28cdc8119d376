"""Constrained action decoding: a trie over the allowed actions' token sequences.

Each action is encoded as it follows the prompt (ANSWER_PREFIX + action) and ends with the
end-of-sequence token, so actions that share a prefix ("heal", "heal ally") or span several
tokens are told apart. Decoding walks the trie greedily: at every step only the tokens that
continue some allowed action can be chosen, so the answer is always one of the allowed actions.
Decoding stops as soon as the tokens so far leave one action possible: the rest is forced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lego_embed.errors import InvalidActionSetError
from lego_embed.npc.output_spec import ANSWER_PREFIX


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)


class ActionTrie:
    """Token trie of an allowed action set; `eos_token_id` closes every action.

    max_tokens: tokens of the longest action, end-of-sequence included.
    """

    def __init__(self, tokenizer, actions: Sequence[str], eos_token_id: int) -> None:
        if isinstance(actions, str) or not actions:
            raise InvalidActionSetError("the allowed actions must be a non-empty list of strings")
        self.eos_token_id = eos_token_id
        self._root = _Node()
        seen: dict[tuple[int, ...], str] = {}
        for action in actions:
            if not isinstance(action, str) or not action.strip():
                raise InvalidActionSetError(f"actions must be non-empty strings, got {action!r}")
            ids = tuple(tokenizer.encode(ANSWER_PREFIX + action, add_special_tokens=False))
            if not ids:
                raise InvalidActionSetError(f"action {action!r} encodes to no token")
            if ids in seen:
                raise InvalidActionSetError(
                    f"actions {seen[ids]!r} and {action!r} are the same to the model "
                    f"(same tokens); list each action once"
                )
            seen[ids] = action
            node = self._root
            node.actions.append(action)
            for token in (*ids, eos_token_id):
                node = node.children.setdefault(token, _Node())
                node.actions.append(action)
        self.actions = tuple(seen.values())
        self.max_tokens = 1 + max(len(ids) for ids in seen)

    def _walk(self, generated: Sequence[int]) -> _Node:
        node = self._root
        for token in generated:
            if token not in node.children:
                raise InvalidActionSetError(f"token {token} leaves the action trie")
            node = node.children[token]
        return node

    def allowed_next(self, generated: Sequence[int]) -> list[int]:
        """Token ids that continue some allowed action after `generated`."""
        return list(self._walk(generated).children)

    def action_of(self, generated: Sequence[int]) -> str | None:
        """The one action still possible after `generated`, or None while several are."""
        actions = self._walk(generated).actions
        return actions[0] if len(actions) == 1 else None

    def continuations(self, generated: Sequence[int]) -> list[int]:
        """Token ids that extend `generated` towards a longer action (end-of-sequence left out)."""
        return [t for t in self._walk(generated).children if t != self.eos_token_id]

    def complete(self, generated: Sequence[int]) -> str | None:
        """The action whose tokens are exactly `generated`, if any."""
        end = self._walk(generated).children.get(self.eos_token_id)
        return end.actions[0] if end is not None else None


class ConstrainedActionSampler:
    """TokenSampler for the executor: greedy decoding restricted to the action trie (the
    `Choice` output spec). It has no line: `line_ids` is always empty, `text` None."""

    text = None

    def __init__(self, trie: ActionTrie) -> None:
        self.trie = trie
        self.max_new_tokens = trie.max_tokens
        self.first_answer_tokens = trie.max_tokens

    def next_token(self, logits: torch.Tensor, generated: Sequence[int]) -> int:
        allowed = self.trie.allowed_next(generated)
        if len(allowed) == 1:
            return allowed[0]
        index = torch.as_tensor(allowed, device=logits.device)
        return allowed[int(torch.argmax(logits.index_select(-1, index)))]

    def finished(self, generated: Sequence[int]) -> bool:
        return self.trie.action_of(generated) is not None

    def action(self, generated: Sequence[int]) -> str | None:
        return self.trie.action_of(generated)

    def line_ids(self, generated: Sequence[int]) -> list[int]:
        return []
