"""What a game asks the runtime for, and the streamed events it gets back before the answer.

A `Request` is task-neutral: a two-part prompt (`npc.prompt_parts.Prompt`), an output spec
(`npc.output_spec`: Choice, Line, ChoiceThenLine) and deadlines. `deadline_ms` is the reaction
time: the action (Choice), the first token of the line (Line), or both (ChoiceThenLine) are due
then. After the first line token, each next one is due `1 / pace_tokens_per_s` seconds after the
one before (the reading pace). The scheduler gives every token its own deadline.

Callbacks run on the runtime's worker thread (keep them short): `on_action` once, when the
action of a ChoiceThenLine is known (before the line); `on_token` for each line token as it is
made, with the text it releases (the released texts joined are the finished line); `callback`
once, with the request's one answer (a `runtime.answers.Decision` of any status). Streamed
events are not answers: only requests still open stream.

When the work does not fit (`runtime.fallback`): `supersede` (default) makes this request replace
the NPC's older open ones that have delivered nothing yet (no action, no line token), which are
answered `superseded` at once; an action already delivered or a line already speaking is carried
out. `fallback` (an allowed action or a callable that returns one) answers an action at its
deadline when the model's action is not there; `corrections` also delivers the model's late
answer after a fallback (streaming stops at the fallback: the correction comes whole). A
fallback is an action: Choice and ChoiceThenLine take one (for ChoiceThenLine it stands in for
the action and the request gets no line), a Line does not. A line never gets a stand-in: a token
made after its deadline is still streamed (counted late, and the skip level is raised to catch
up) and the line runs to its end; a failure that ends a line early (overdue, stopped, a worker
fault) leaves the streamed tokens standing, and the failed answer's `line` is exactly what was
streamed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lego_embed.errors import RuntimeConfigError
from lego_embed.npc.output_spec import Choice, ChoiceThenLine, Line, OutputSpec
from lego_embed.npc.prompt_parts import Prompt
from lego_embed.runtime.fallback import Fallback, check_fallback

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
    """One NPC request (see the module docstring). deadline_ms: reaction time (ms after
    submit); pace_tokens_per_s: the line's reading pace. supersede / fallback / corrections: what
    happens when the work does not fit (module docstring). warnings: problems found while
    building it that do not stop it (unused fields, a persona the model was not trained on);
    they come back in the Decision so the game can show them once."""

    npc_id: str
    prompt: Prompt
    output: OutputSpec
    deadline_ms: float
    pace_tokens_per_s: float = DEFAULT_PACE_TOKENS_PER_S
    callback: Callable[[Any], None] | None = None
    on_token: Callable[[TokenEvent], None] | None = None
    on_action: Callable[[ActionEvent], None] | None = None
    warnings: tuple[str, ...] = ()
    supersede: bool = True
    fallback: Fallback | None = None
    corrections: bool = False

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
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or not value > 0):
                raise RuntimeConfigError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("supersede", "corrections"):
            if not isinstance(getattr(self, name), bool):
                raise RuntimeConfigError(f"{name} must be True or False, got "
                                         f"{getattr(self, name)!r}")
        if self.fallback is not None and isinstance(self.output, Line):
            raise RuntimeConfigError(
                "a Line request takes no fallback (a fallback is an action); use ChoiceThenLine "
                "for an action with a line, or leave fallback out"
            )
        if not isinstance(self.output, Line):
            check_fallback(self.fallback, self.output.actions)

    def token_deadline_ms(self, index: int) -> float:
        """Deadline of line token `index` (1-based), relative to the request."""
        return self.deadline_ms + (index - 1) * 1000.0 / self.pace_tokens_per_s
