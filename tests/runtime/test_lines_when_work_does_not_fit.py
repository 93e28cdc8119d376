"""Streamed lines meet superseding, fallbacks and the overdue rule, one answer each.

The rules (`runtime.request`): a fallback is an action, so a Line takes none and a
ChoiceThenLine's fallback stands in for its action only; a line is never cut for lateness (late
tokens still stream, counted); a failure that ends a line early leaves what was streamed as the
answer's line; superseding replaces only requests that delivered nothing yet. The runtime runs
on a ManualClock without a worker thread: each run_until_idle(max_cycles=1) with no engine
reporting is one subtask, and time passes only where the test moves the clock.
"""

from __future__ import annotations

import random

import pytest
from runtime_replay import SECOND, manual_runtime

from lego_embed.errors import RuntimeConfigError
from lego_embed.model.loading import LoadedModel
from lego_embed.npc.output_spec import Line
from lego_embed.npc.prompt_parts import Prompt
from lego_embed.runtime.events import FRAME_BEGIN, PASS_BEGIN, EngineEvent
from lego_embed.runtime.request import ActionEvent, Request, TokenEvent
from lego_embed.runtime.runtime import Decision, Runtime
from lego_embed.tasks.combat.policy import ACTIONS, random_situation
from lego_embed.tasks.combat.request import combat_request


def run_until(runtime: Runtime, done, limit: int = 10_000) -> None:
    """One subtask at a time until done() holds."""
    for _ in range(limit):
        if done():
            return
        runtime.run_until_idle(max_cycles=1)
    raise AssertionError("the condition never held")


def test_a_line_takes_no_fallback() -> None:
    with pytest.raises(RuntimeConfigError, match="Line request takes no fallback"):
        Request("npc", Prompt("You guard the gate. ", "Say hello."), Line(), 300.0,
                fallback="block")
    state = random_situation(random.Random(0))
    with pytest.raises(RuntimeConfigError, match="no fallback"):
        combat_request("npc", state, ACTIONS, 300.0, output="line", say_for="block",
                       fallback="block")
    request = combat_request("npc", state, ACTIONS, 300.0, output="choice_then_line",
                             fallback="block")
    assert request.fallback == "block"


def test_an_action_made_in_time_keeps_its_line_streaming_past_the_deadline(
    npc_loaded: LoadedModel,
) -> None:
    """The action and the first line token come within 200 ms; then 1 s passes (a stall): the
    fallback due at 200 ms does not replace an action already made, and the rest of the line
    still streams, every token late, and is the answer's line."""
    runtime, clock = manual_runtime(npc_loaded)
    actions: list[ActionEvent] = []
    tokens: list[TokenEvent] = []
    answers: list[Decision] = []
    state = random_situation(random.Random(1))
    runtime.submit(combat_request("brute", state, ACTIONS, 200.0, output="choice_then_line",
                                  max_tokens=6, fallback="block", callback=answers.append,
                                  on_action=actions.append, on_token=tokens.append))
    run_until(runtime, lambda: tokens)
    assert actions and actions[0].deadline_met and tokens[0].deadline_met
    clock.advance(SECOND)
    runtime.run_until_idle()
    (answer,) = answers
    assert (answer.status, answer.action) == ("decided", actions[0].action)
    assert answer.deadline_met  # the action and the first token were in time
    assert "".join(t.text for t in tokens) == answer.line
    late = [t for t in tokens if not t.deadline_met]
    assert late and answer.late_tokens == answer.line_tokens - 1 == len({t.index for t in late})
    stats = runtime.stats()
    assert stats["fallbacks"] == 0 and stats["late_tokens"] == answer.late_tokens


def test_an_action_and_line_whose_action_misses_the_deadline_gets_the_fallback_alone(
    npc_loaded: LoadedModel,
) -> None:
    """The engine sits inside a pass from the start (nothing may run): at the 200 ms deadline
    the fallback answers, with no line, and nothing of the model's work streams afterwards."""
    runtime, clock = manual_runtime(npc_loaded)
    for kind, name in ((FRAME_BEGIN, ""), (PASS_BEGIN, "render")):
        runtime.on_event(EngineEvent(kind, name, clock.peek_ns()))
    tokens: list[TokenEvent] = []
    answers: list[Decision] = []
    state = random_situation(random.Random(2))
    runtime.submit(combat_request("brute", state, ACTIONS, 200.0, output="choice_then_line",
                                  fallback="block", callback=answers.append,
                                  on_token=tokens.append))
    runtime.run_until_idle()
    assert not answers and runtime.next_wake_ns() == SECOND + 200_000_000
    clock.set(runtime.next_wake_ns())
    runtime.run_until_idle()
    (answer,) = answers
    assert (answer.status, answer.action, answer.line) == ("fallback", "block", None)
    assert answer.latency_ms == pytest.approx(200.0) and answer.output == "choice_then_line"
    assert not tokens and runtime.stats()["queue_length"] == 0


def test_a_line_cut_short_by_the_overdue_rule_keeps_what_was_streamed(
    npc_loaded: LoadedModel,
) -> None:
    """Two tokens stream, then the engine enters a pass that never ends: long after the next
    token's deadline the line fails (RequestOverdueError, naming the token), and its answer's
    line is exactly the two tokens' text."""
    runtime, clock = manual_runtime(npc_loaded)
    tokens: list[TokenEvent] = []
    answers: list[Decision] = []
    state = random_situation(random.Random(3))
    runtime.submit(combat_request("coward", state, ACTIONS, 300.0, output="line",
                                  say_for="retreat", max_tokens=12, callback=answers.append,
                                  on_token=tokens.append))
    run_until(runtime, lambda: len({t.index for t in tokens}) == 2)
    for kind, name in ((FRAME_BEGIN, ""), (PASS_BEGIN, "render")):
        runtime.on_event(EngineEvent(kind, name, clock.peek_ns()))
    runtime.run_until_idle()
    assert not answers
    clock.advance(6 * SECOND)
    runtime.run_until_idle()
    (answer,) = answers
    assert answer.status == "failed" and answer.error.startswith("RequestOverdueError")
    assert "line token 3" in answer.error
    assert answer.line == "".join(t.text for t in tokens) and answer.line_tokens == 2
    assert answer.first_token_ms == pytest.approx(tokens[0].latency_ms)


def test_superseding_replaces_a_waiting_line_but_not_one_already_speaking(
    npc_loaded: LoadedModel,
) -> None:
    runtime, _ = manual_runtime(npc_loaded)
    tokens: list[TokenEvent] = []
    answers: list[Decision] = []
    rng = random.Random(4)

    def ask(output: str) -> int:
        return runtime.submit(combat_request(
            "duelist", random_situation(rng), ACTIONS, 300.0, output=output, say_for="block",
            max_tokens=6, callback=answers.append, on_token=tokens.append,
        ))

    waiting = ask("line")
    speaking = ask("line")  # the first has not run yet: superseded at once, silently
    run_until(runtime, lambda: tokens)
    newest = ask("choice")  # the second is speaking: it goes on
    runtime.run_until_idle()
    by_id = {d.request_id: d for d in answers}
    assert (by_id[waiting].status, by_id[waiting].line) == ("superseded", None)
    assert by_id[speaking].status == "decided" and by_id[speaking].line
    assert "".join(t.text for t in tokens if t.request_id == speaking) == by_id[speaking].line
    assert not [t for t in tokens if t.request_id == waiting]
    assert by_id[newest].status == "decided" and by_id[newest].action in ACTIONS
    assert runtime.stats()["superseded"] == 1 and len(answers) == 3
