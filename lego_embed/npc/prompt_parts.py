"""A prompt in two parts, and its token ids with the static part marked.

`Prompt(static, dynamic)`: the static part (persona, world rules, a character sheet) is the
same for every request of an NPC, and for every NPC that shares it, so its KV is computed once
and reused; the dynamic part is what changed this time. Without a chat template the model reads
`static + dynamic` exactly as written (put the blank or newline between them yourself). With a
chat template the static part is the system message and the dynamic part the user message.

The static part's tokens are found on the encoded whole prompt (the longest start it shares
with the static text's own encoding), so a tokenizer that merges across the boundary only
shortens the reusable part, never changes what the model reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from lego_embed.errors import InvalidPromptError
from lego_embed.npc.chat_template import ChatTemplate


@dataclass(frozen=True)
class Prompt:
    """static: text shared across requests (and NPCs); dynamic: this request's text."""

    static: str
    dynamic: str

    def __post_init__(self) -> None:
        for name in ("static", "dynamic"):
            if not isinstance(getattr(self, name), str):
                raise InvalidPromptError(
                    f"the prompt's {name} part must be a string, got {getattr(self, name)!r}"
                )
        if not (self.static + self.dynamic).strip():
            raise InvalidPromptError("the prompt is empty; give a static or a dynamic part")


@dataclass(frozen=True)
class EncodedPrompt:
    """ids: the whole prompt's token ids; static_tokens: how many leading ids are the static
    part (0 when there is none)."""

    ids: tuple[int, ...]
    static_tokens: int

    @property
    def static_ids(self) -> tuple[int, ...]:
        return self.ids[: self.static_tokens]


def _common_start(first: list[int], second: list[int]) -> int:
    count = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        count += 1
    return count


def encode_prompt(tokenizer, prompt: Prompt, chat: ChatTemplate | None = None) -> EncodedPrompt:
    """Token ids of the prompt as the model reads it (see the module docstring)."""
    if chat is None:
        text, static_text = prompt.static + prompt.dynamic, prompt.static
    else:
        text, static_text = chat.render(prompt.static, prompt.dynamic)
    add_special = chat is None  # a chat template writes its own BOS where the model wants one
    ids = tokenizer.encode(text, add_special_tokens=add_special)
    if not ids:
        raise InvalidPromptError("the prompt encodes to no token; give it some text")
    static = 0
    if static_text:
        static_ids = tokenizer.encode(static_text, add_special_tokens=add_special)
        static = min(_common_start(ids, static_ids), len(ids) - 1)
    return EncodedPrompt(tuple(ids), static)
