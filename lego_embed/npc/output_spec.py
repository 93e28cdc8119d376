"""What an NPC request asks the model for: an output spec, checked when it is made.

- `Choice(actions)`: one of the given actions (decoded through the action trie).
- `Line(max_tokens, stop)`: free text, streamed token by token; it ends at the model's
  end-of-sequence token, at the first stop string (which is not part of the line), or after
  `max_tokens` tokens.
- `ChoiceThenLine(actions, max_tokens, stop)`: an action and what the NPC says while doing it,
  in one constrained generation. The answer's text is always
  `ANSWER_PREFIX + action + separator + line`: the action comes from the trie, the separator is
  forced, and the line is free text as in `Line`, so `parse` splits it back every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lego_embed.errors import InvalidActionSetError, OutputSpecError

ANSWER_PREFIX = " "
SAY_SEPARATOR = " say"
MAX_LINE_TOKENS = 256


def _actions(actions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(actions, str) or not actions:
        raise InvalidActionSetError("the allowed actions must be a non-empty list of strings")
    for action in actions:
        if not isinstance(action, str) or not action.strip():
            raise InvalidActionSetError(f"actions must be non-empty strings, got {action!r}")
    return tuple(actions)


def _line_limits(max_tokens: int, stop: Sequence[str]) -> tuple[str, ...]:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise OutputSpecError(f"max_tokens must be a whole number, got {max_tokens!r}")
    if not 1 <= max_tokens <= MAX_LINE_TOKENS:
        raise OutputSpecError(f"max_tokens must be in 1..{MAX_LINE_TOKENS}, got {max_tokens}")
    if isinstance(stop, str):
        raise OutputSpecError(f"stop must be a list of strings, got the string {stop!r}")
    for text in stop:
        if not isinstance(text, str) or not text:
            raise OutputSpecError(f"stop strings must be non-empty strings, got {text!r}")
    return tuple(stop)


@dataclass(frozen=True)
class Choice:
    """Pick one of `actions` (each a non-empty string, as the model should read it)."""

    actions: tuple[str, ...]
    kind = "choice"

    def __post_init__(self) -> None:
        object.__setattr__(self, "actions", _actions(self.actions))


@dataclass(frozen=True)
class Line:
    """Say something: at most `max_tokens` tokens, cut at the first of the `stop` strings."""

    max_tokens: int = 24
    stop: tuple[str, ...] = ()
    kind = "line"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", _line_limits(self.max_tokens, self.stop))


@dataclass(frozen=True)
class ChoiceThenLine:
    """Pick one of `actions`, then say a line of at most `max_tokens` tokens (see module doc)."""

    actions: tuple[str, ...]
    max_tokens: int = 24
    stop: tuple[str, ...] = ()
    separator: str = SAY_SEPARATOR
    kind = "choice_then_line"

    def __post_init__(self) -> None:
        object.__setattr__(self, "actions", _actions(self.actions))
        object.__setattr__(self, "stop", _line_limits(self.max_tokens, self.stop))
        if not isinstance(self.separator, str) or not self.separator.strip():
            raise OutputSpecError(f"separator must be a non-blank string, got {self.separator!r}")

    def render(self, action: str, line: str) -> str:
        """The answer text for an action and a line (what the model generates)."""
        return f"{ANSWER_PREFIX}{action}{self.separator} {line}"

    def parse(self, text: str) -> tuple[str, str]:
        """(action, line) from an answer text; OutputSpecError if it does not follow the
        format (it always does when the answer came from this spec's sampler)."""
        best = None
        for action in self.actions:
            head = f"{ANSWER_PREFIX}{action}{self.separator}"
            if text.startswith(head) and (best is None or len(action) > len(best)):
                best = action
        if best is None:
            raise OutputSpecError(
                f"{text!r} does not start with an allowed action and {self.separator!r}"
            )
        return best, text[len(ANSWER_PREFIX) + len(best) + len(self.separator):].strip()


OutputSpec = Choice | Line | ChoiceThenLine
