"""The combat task as a user of the task-neutral API: state dict in, runtime Request out.

The state is validated (InvalidGameStateError names the bad field), turned into the two-part
combat prompt, and paired with an output spec: `choice` (an action), `choice_then_line` (an
action and the persona's bark) or `line` (a bark for an action the game chose, passed as
`say_for`). `supersede`, `fallback` and `corrections` are the runtime's options for when the
work does not fit (`runtime.request`). Problems that do not stop the request (fields the task
never reads, a persona the bundled model was not trained on) are listed in `state_warnings`
and ride along in the request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lego_embed.errors import InvalidGameStateError
from lego_embed.npc.output_spec import Choice, ChoiceThenLine, Line, OutputSpec
from lego_embed.runtime.fallback import Fallback
from lego_embed.runtime.request import DEFAULT_PACE_TOKENS_PER_S, Request
from lego_embed.tasks.combat.policy import PERSONAS
from lego_embed.tasks.combat.prompt import combat_prompt, line_prompt
from lego_embed.tasks.combat.state import FIELDS, validate_state

OUTPUTS = ("choice", "choice_then_line", "line")
LINE_MAX_TOKENS = 24


def state_warnings(state: Mapping[str, Any]) -> tuple[str, ...]:
    """Fields the combat prompt never shows the model, and a persona it was not trained on."""
    warnings = [
        f"state field '{name}' is not used: the combat task reads only {', '.join(FIELDS)}"
        for name in sorted(str(k) for k in state if k not in FIELDS)
    ]
    persona = state.get("persona")
    if isinstance(persona, str) and persona.strip() not in PERSONAS:
        warnings.append(
            f"persona '{persona}' was never trained: the bundled model knows "
            f"{', '.join(PERSONAS)} and will answer as it would for an unknown word"
        )
    return tuple(warnings)


def combat_request(
    npc_id: str,
    state: Mapping[str, Any],
    actions: Sequence[str],
    deadline_ms: float,
    output: str = "choice",
    say_for: str | None = None,
    max_tokens: int = LINE_MAX_TOKENS,
    pace_tokens_per_s: float = DEFAULT_PACE_TOKENS_PER_S,
    callback: Callable[[Any], None] | None = None,
    on_token: Callable[[Any], None] | None = None,
    on_action: Callable[[Any], None] | None = None,
    supersede: bool = True,
    fallback: Fallback | None = None,
    corrections: bool = False,
) -> Request:
    """A runtime Request for a combat state (see the module docstring)."""
    game_state = validate_state(state)
    spec: OutputSpec
    if output == "choice":
        prompt, spec = combat_prompt(game_state), Choice(actions)
    elif output == "choice_then_line":
        prompt, spec = combat_prompt(game_state), ChoiceThenLine(actions, max_tokens)
    elif output == "line":
        if not isinstance(say_for, str) or not say_for.strip():
            raise InvalidGameStateError(
                "say_for", "a line needs the action the NPC is doing (say_for='block')"
            )
        prompt, spec = line_prompt(game_state, say_for), Line(max_tokens)
    else:
        raise InvalidGameStateError("output", f"{output!r} is not one of {', '.join(OUTPUTS)}")
    return Request(
        npc_id=str(npc_id), prompt=prompt, output=spec, deadline_ms=deadline_ms,
        pace_tokens_per_s=pace_tokens_per_s, callback=callback, on_token=on_token,
        on_action=on_action, warnings=state_warnings(state), supersede=supersede,
        fallback=fallback, corrections=corrections,
    )
