"""Output specs and their samplers on a real (tiny, random) model: the answer always has the
spec's shape, a choice-then-line always parses back, lines stop where they must, and streamed
text joined is the finished line."""

from __future__ import annotations

import random

import pytest
import torch

from lego_embed.errors import InvalidActionSetError, OutputSpecError
from lego_embed.model.executor import Executor
from lego_embed.model.loading import load_model
from lego_embed.npc.answer import make_sampler, read_answer
from lego_embed.npc.decider import NpcDecider
from lego_embed.npc.line_text import LineText
from lego_embed.npc.output_spec import ANSWER_PREFIX, Choice, ChoiceThenLine, Line
from lego_embed.npc.prompt_parts import Prompt
from lego_embed.tasks.combat.policy import ACTIONS, random_situation
from lego_embed.tasks.combat.prompt import combat_prompt
from lego_embed.tasks.combat.state import validate_state


@pytest.fixture(scope="module")
def loaded(tiny_npc_model_dir):
    return load_model(tiny_npc_model_dir)


def prompts(count: int, seed: int) -> list[Prompt]:
    rng = random.Random(seed)
    return [combat_prompt(validate_state(random_situation(rng))) for _ in range(count)]


def test_specs_are_checked_when_made() -> None:
    with pytest.raises(InvalidActionSetError):
        Choice([])
    with pytest.raises(InvalidActionSetError):
        ChoiceThenLine("block")
    with pytest.raises(OutputSpecError, match="max_tokens"):
        Line(0)
    with pytest.raises(OutputSpecError, match="stop"):
        Line(8, stop="\n")
    with pytest.raises(OutputSpecError, match="separator"):
        ChoiceThenLine(["block"], separator=" ")


def test_choice_then_line_parses_every_time(loaded) -> None:
    decider = NpcDecider(loaded)
    spec = ChoiceThenLine(ACTIONS, max_tokens=6)
    tokenizer = loaded.tokenizer
    for prompt in prompts(25, seed=1):
        sampler = make_sampler(tokenizer, spec)
        state = decider.executor.start(tokenizer.encode(prompt.static + prompt.dynamic), sampler)
        decider.executor.run_to_completion(state)
        answer = read_answer(sampler, state.generated)
        assert answer.action in ACTIONS
        assert 1 <= answer.line_tokens <= 6 and answer.line is not None
        text = tokenizer.decode(state.generated, skip_special_tokens=True)
        assert spec.parse(ANSWER_PREFIX + text.lstrip()) == (answer.action, answer.line.strip())


def test_the_action_of_a_choice_then_line_is_the_choice_s_when_the_line_does_not_matter(
    loaded,
) -> None:
    """The action part is decoded exactly as a Choice: the same greedy walk of the trie."""
    decider = NpcDecider(loaded)
    for prompt in prompts(10, seed=2):
        choice = decider.answer(prompt, Choice(ACTIONS))
        spoken = decider.answer(prompt, ChoiceThenLine(ACTIONS, max_tokens=3))
        assert spoken.action == choice.action


def test_a_line_stops_at_its_limit_its_stop_string_or_eos(loaded) -> None:
    decider = NpcDecider(loaded)
    tokenizer = loaded.tokenizer
    prompt = prompts(1, seed=3)[0]
    free = decider.answer(prompt, Line(12))
    assert 1 <= free.generated_tokens <= 12
    words = free.line.split()
    if len(words) >= 3:  # cut at the third word: the line is the text before it
        stop = " " + words[2]
        cut = decider.answer(prompt, Line(12, stop=(stop,)))
        assert cut.line == free.line[: free.line.index(stop)]
        assert stop not in cut.line
    one = decider.answer(prompt, Line(1))
    assert one.generated_tokens == 1
    assert free.line.startswith(one.line)
    assert tokenizer.eos_token_id is not None  # a line never ends before its first token:
    sampler = make_sampler(tokenizer, Line(4))
    logits = torch.zeros(tokenizer.vocab_size)
    logits[tokenizer.eos_token_id] = 10.0
    assert sampler.next_token(logits, []) != tokenizer.eos_token_id
    assert sampler.next_token(logits, [5]) == tokenizer.eos_token_id


class _Words:
    """A stand-in tokenizer whose tokens are fixed strings, to drive LineText exactly."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True) -> str:
        return "".join(self.pieces[i] for i in ids)


@pytest.mark.parametrize(
    ("pieces", "stop", "line"),
    [
        ([" Halt", ",", " thief", "!"], (), "Halt, thief!"),
        ([" Halt", " EN", "D", " more"], ("END",), "Halt "),
        ([" Halt", " E", "N", "X"], ("END",), "Halt ENX"),
        ([" caf", "\ufffd", "\u00e9", " ok"], (), "caf\ufffd\u00e9 ok"),
    ],
)
def test_streamed_pieces_joined_are_the_finished_line(pieces, stop, line) -> None:
    text = LineText(_Words(pieces), stop)
    released = []
    for count in range(1, len(pieces) + 1):
        released.append(text.update(list(range(count))))
        if text.stopped:
            break
    released.append(text.finish())
    assert "".join(released) == text.released == line


def test_held_back_text_waits_for_the_stop_string_to_be_decided() -> None:
    text = LineText(_Words([" go", " E", "N", "D"]), ("END",))
    assert text.update([0]) == "go"
    assert text.update([0, 1]) == " "  # "E" might start "END": held back
    assert text.update([0, 1, 2]) == ""
    assert text.update([0, 1, 2, 3]) == "" and text.stopped
    assert text.finish() == "" and text.released == "go "


def test_executor_rejects_a_prompt_too_long_for_the_answer(loaded) -> None:
    from lego_embed.errors import PromptTooLongError

    executor = Executor(loaded)
    sampler = make_sampler(loaded.tokenizer, Line(64))
    with pytest.raises(PromptTooLongError):
        executor.check_prompt(list(range(5, 100)), sampler)
