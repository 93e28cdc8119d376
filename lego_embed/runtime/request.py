"""What a game asks the runtime for, and the streamed events it gets back before the answer.

A `Request` is task-neutral: a two-part prompt (`npc.prompt_parts.Prompt`), an output spec
(`npc.output_spec`: Choice, Line, ChoiceThenLine) and deadlines. `deadline_ms` is the reaction
time: the action (Choice), the first token of the line (Line), or both (ChoiceThenLine) are due
then. After the first line token, each next one is due `1 / pace_tokens_per_s` seconds after the
one before (the reading pace). The scheduler gives every token its own deadline.

Callbacks run on the runtime's worker thread (keep them short): `on_action` once, when the
action of a ChoiceThenLine is known (before the line); `on_token` for each line token as it is
made, with the text it releases (the released texts joined are the finished line); `callback`
once, with the finished Decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lego_embed.errors import RuntimeConfigError
from lego_embed.npc.output_spec import Choice, ChoiceThenLine, Line, OutputSpec
from lego_embed.npc.prompt_parts import Prompt

DEFAULT_PACE_TOKENS_PER_S = 15.0


@dataclass(frozen=True)
class ActionEvent:
    """The action of a ChoiceThenLine request, as soon as it is decided. t_ns: monotonic clock;
    latency_ms: since the request; deadline_met: within the request's deadline_ms."""

    request_id: int
    npc_id: str
    action: str
    t_ns: int
    latency_ms: float
    deadline_met: bool
    skip_level: int


@dataclass(frozen=True)
class TokenEvent:
    """One line token. index: 1 for the first line token; text: the text it releases (may be
    empty while a stop string or a character is undecided; the last event also releases what
    was held back). t_ns: monotonic clock; latency_ms: since the request; deadline_ms: this
    token's deadline relative to the request (deadline_ms + (index - 1) / pace);
    deadline_met: made by then; skip_level: the level of the pass that made it."""

    request_id: int
    npc_id: str
    index: int
    text: str
    t_ns: int
    latency_ms: float
    deadline_ms: float
    deadline_met: bool
    skip_level: int


@dataclass(frozen=True)
class Request:
    """One NPC request (see the module docstring). warnings: problems found while building it
    that do not stop it (unused fields, a persona the model was not trained on); they come
    back in the Decision so the game can show them once."""

    npc_id: str
    prompt: Prompt
    output: OutputSpec
    deadline_ms: float
    pace_tokens_per_s: float = DEFAULT_PACE_TOKENS_PER_S
    callback: Callable[[Any], None] | None = None
    on_token: Callable[[TokenEvent], None] | None = None
    on_action: Callable[[ActionEvent], None] | None = None
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, Prompt):
            raise RuntimeConfigError(
                f"prompt must be a lego_embed.npc.prompt_parts.Prompt, got {self.prompt!r}"
            )
        if not isinstance(self.output, Choice | Line | ChoiceThenLine):
            raise RuntimeConfigError(
                f"output must be Choice, Line or ChoiceThenLine, got {self.output!r}"
            )
        for name in ("deadline_ms", "pace_tokens_per_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise RuntimeConfigError(f"{name} must be a number > 0, got {value!r}")

    def token_deadline_ms(self, index: int) -> float:
        """Deadline of line token `index` (1-based), relative to the request."""
        return self.deadline_ms + (index - 1) * 1000.0 / self.pace_tokens_per_s
