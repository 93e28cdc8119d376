"""From an output spec to the sampler that decodes it, and from generated tokens to the answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lego_embed.model.sampling import GreedySampler
from lego_embed.npc.action_line import ChoiceThenLineSampler
from lego_embed.npc.actions import ActionTrie, ConstrainedActionSampler
from lego_embed.npc.line_sampler import LineSampler
from lego_embed.npc.output_spec import Choice, ChoiceThenLine, Line, OutputSpec


class FreeChoiceSampler(GreedySampler):
    """LEGO's unconstrained shape for a Choice (an ablation): up to `max_new_tokens` greedy
    tokens, and the answer counts only if its text is exactly an allowed action."""

    text = None

    def __init__(self, tokenizer, spec: Choice, max_new_tokens: int) -> None:
        super().__init__(tokenizer.eos_token_id, max_new_tokens)
        self._tokenizer = tokenizer
        self._actions = spec.actions
        self.first_answer_tokens = max_new_tokens

    def action(self, generated: Sequence[int]) -> str | None:
        text = self._tokenizer.decode(list(generated), skip_special_tokens=True).strip()
        return text if text in self._actions else None

    def line_ids(self, generated: Sequence[int]) -> list[int]:
        return []


AnswerSampler = ConstrainedActionSampler | LineSampler | ChoiceThenLineSampler | FreeChoiceSampler


@dataclass(frozen=True)
class Answer:
    """What the model answered: the action (Choice, ChoiceThenLine) and the line (Line,
    ChoiceThenLine; the text released while streaming, joined), with their token counts."""

    action: str | None
    line: str | None
    tokens: int
    line_tokens: int


def make_sampler(tokenizer, spec: OutputSpec) -> AnswerSampler:
    """A fresh sampler for one request (samplers with a line keep its text)."""
    if isinstance(spec, Choice):
        return ConstrainedActionSampler(ActionTrie(tokenizer, spec.actions, tokenizer.eos_token_id))
    if isinstance(spec, Line):
        return LineSampler(tokenizer, spec)
    if isinstance(spec, ChoiceThenLine):
        return ChoiceThenLineSampler(tokenizer, spec)
    raise TypeError(f"not an output spec: {spec!r}; use Choice, Line or ChoiceThenLine")


def read_answer(sampler: AnswerSampler, generated: Sequence[int]) -> Answer:
    """The answer of a finished generation (releases the rest of the line's text)."""
    line = None
    if sampler.text is not None:
        sampler.text.finish()
        line = sampler.text.released
    return Answer(
        action=sampler.action(generated), line=line, tokens=len(generated),
        line_tokens=len(sampler.line_ids(generated)),
    )
