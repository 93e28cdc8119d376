"""Requests submitted while the engine renders are admitted in a gap with room for admission.

Admission (the prompt's executor state, the level choice) costs the worker CPU; inside a pass
that CPU is the renderer's. What cannot wait does not: superseding answers the older request at
once and a fallback is armed at once, and no request waits more than one frame budget (under
`lego` with work queued: after the inter-frame gap whose tail it was deferred to). The
runtime runs on a ManualClock (an admission measures 0 ns unless a test sets its cost);
assertions are on queue contents, answers and the timestamps they carry.
"""

from __future__ import annotations

import random

import pytest
from runtime_replay import MS, SECOND, SteppingClock, manual_runtime

from lego_embed.model.loading import LoadedModel
from lego_embed.runtime.answers import Decision
from lego_embed.runtime.events import FRAME_BEGIN, FRAME_END, PASS_BEGIN, PASS_END, EngineEvent
from lego_embed.runtime.runtime import Runtime
from lego_embed.tasks.combat.policy import ACTIONS, random_situation
from lego_embed.tasks.combat.request import combat_request


def _submit(runtime: Runtime, npc_id: str, answers: list[Decision], seed: int,
            **options: object) -> int:
    state = random_situation(random.Random(seed))
    return runtime.submit(combat_request(npc_id, state, ACTIONS, 300.0,
                                         callback=answers.append, **options))


def _event(runtime: Runtime, kind: str, name: str, t_ns: int) -> None:
    runtime.on_event(EngineEvent(kind, name, t_ns))


def _inside_a_pass(loaded: LoadedModel) -> tuple[Runtime, SteppingClock]:
    """A manual runtime whose engine has begun a frame and its first pass `p0`."""
    runtime, clock = manual_runtime(loaded)
    _event(runtime, FRAME_BEGIN, "", clock.peek_ns())
    _event(runtime, PASS_BEGIN, "p0", clock.peek_ns())
    return runtime, clock


def test_a_request_sent_during_a_pass_is_admitted_when_the_pass_ends(
    npc_loaded: LoadedModel,
) -> None:
    runtime, clock = _inside_a_pass(npc_loaded)
    answers: list[Decision] = []
    _submit(runtime, "guard", answers, 1)
    runtime.run_until_idle()
    assert len(runtime.scheduler) == 0 and runtime.stats()["queue_length"] == 1
    clock.advance(2 * MS)
    _event(runtime, PASS_END, "p0", clock.peek_ns())
    runtime.run_until_idle()
    assert len(runtime.scheduler) == 1 and not answers  # an unseen gap: nothing fits in it


def test_admission_waits_for_a_gap_with_room_for_its_measured_cost(
    npc_loaded: LoadedModel,
) -> None:
    """Frames of a 4 ms pass and an 8 ms gap teach the tracker that slot's length; an
    admission measured at 3 ms does not start 6 ms into that gap, and does at its start."""
    runtime, clock = manual_runtime(npc_loaded)
    t = clock.peek_ns()
    for _ in range(5):
        _event(runtime, FRAME_BEGIN, "", t)
        _event(runtime, PASS_BEGIN, "p0", t)
        _event(runtime, PASS_END, "p0", t + 4 * MS)
        _event(runtime, FRAME_END, "", t + 12 * MS)
        t += round(SECOND / 60)
    clock.set(t)
    runtime.run_until_idle()
    runtime._admission_ns = 3.0 * MS  # as measured on a slow machine
    _event(runtime, FRAME_BEGIN, "", t)
    _event(runtime, PASS_BEGIN, "p0", t)
    _event(runtime, PASS_END, "p0", t + 4 * MS)
    clock.set(t + 10 * MS)  # 6 ms into the 8 ms gap
    answers: list[Decision] = []
    _submit(runtime, "guard", answers, 1)
    runtime.run_until_idle()
    assert len(runtime.scheduler) == 0
    t += round(SECOND / 60)
    _event(runtime, FRAME_END, "", t - 4 * MS)
    _event(runtime, FRAME_BEGIN, "", t)
    _event(runtime, PASS_BEGIN, "p0", t)
    _event(runtime, PASS_END, "p0", t + 4 * MS)
    clock.set(t + 4 * MS)
    runtime.run_until_idle()
    assert len(runtime.scheduler) + len(answers) == 1


def test_superseding_and_fallbacks_do_not_wait_for_the_gap(npc_loaded: LoadedModel) -> None:
    runtime, clock = manual_runtime(npc_loaded)
    answers: list[Decision] = []
    _event(runtime, FRAME_BEGIN, "", clock.peek_ns())
    _event(runtime, PASS_BEGIN, "p0", clock.peek_ns())
    _event(runtime, PASS_END, "p0", clock.peek_ns())
    first = _submit(runtime, "guard", answers, 1)
    runtime.run_until_idle()  # admitted in the gap, too short (unseen) for any subtask
    assert len(runtime.scheduler) == 1
    _event(runtime, PASS_BEGIN, "p1", clock.peek_ns())
    clock.advance(5 * MS)
    second = _submit(runtime, "guard", answers, 2, fallback="block")
    runtime.run_until_idle()
    (superseded,) = answers
    assert (superseded.request_id, superseded.status) == (first, "superseded")
    assert superseded.latency_ms == 5.0 and len(runtime.scheduler) == 0  # its work dropped
    assert runtime.next_wake_ns() == SECOND + 305 * MS  # the new request's deadline
    clock.set(runtime.next_wake_ns())
    runtime.run_until_idle()  # the engine is still inside its pass
    fallback = answers[-1]
    assert (fallback.request_id, fallback.status, fallback.action) == (second, "fallback", "block")
    assert fallback.latency_ms == 300.0
    assert len(runtime.scheduler) == 0 and runtime.stats()["queue_length"] == 0
    assert [a.request_id for a in answers] == [first, second]


def test_no_request_waits_for_admission_longer_than_a_frame_budget(
    npc_loaded: LoadedModel,
) -> None:
    """An engine inside a pass longer than a frame no longer holds admission back: the
    request is queued (so the level choice and the overdue rule see it)."""
    runtime, clock = _inside_a_pass(npc_loaded)
    answers: list[Decision] = []
    _submit(runtime, "guard", answers, 1)
    clock.advance(16 * MS)
    runtime.run_until_idle()
    assert len(runtime.scheduler) == 0
    clock.advance(MS)
    runtime.run_until_idle()
    assert len(runtime.scheduler) == 1 and not answers


def test_a_request_superseded_before_admission_leaves_the_queue_at_once(
    npc_loaded: LoadedModel,
) -> None:
    runtime, clock = _inside_a_pass(npc_loaded)
    answers: list[Decision] = []
    first = _submit(runtime, "guard", answers, 1)
    runtime.run_until_idle()
    clock.advance(MS)
    _submit(runtime, "guard", answers, 2)
    runtime.run_until_idle()
    assert [(a.request_id, a.status) for a in answers] == [(first, "superseded")]
    assert runtime.stats()["queue_length"] == 1  # the newer one, waiting for a gap


def _in_an_inter_frame_gap(
    loaded: LoadedModel, **options: object
) -> tuple[Runtime, SteppingClock, int]:
    """A manual lego runtime sent six frames (a 4 ms pass, then 8 ms of gap before the frame
    ends) and now 12 ms into the sixth: in its inter-frame gap, which ends at the next vsync
    (the returned ns). `options`: RuntimeConfig fields."""
    runtime, clock = manual_runtime(loaded, **options)
    t = clock.peek_ns()
    frame_ns = round(SECOND / 60)
    for _ in range(6):
        _event(runtime, FRAME_BEGIN, "", t)
        _event(runtime, PASS_BEGIN, "p0", t)
        _event(runtime, PASS_END, "p0", t + 4 * MS)
        _event(runtime, FRAME_END, "", t + 12 * MS)
        t += frame_ns
    clock.set(t - frame_ns + 12 * MS)
    runtime.run_until_idle()
    return runtime, clock, t


def _with_a_line_in_progress(
    loaded: LoadedModel, **options: object
) -> tuple[Runtime, SteppingClock, int]:
    """`_in_an_inter_frame_gap` with a request generating a spoken line queued (one decode
    step per worker turn), a few of its passes run."""
    runtime, clock, gap_end_ns = _in_an_inter_frame_gap(loaded, **options)
    answers: list[Decision] = []
    _submit(runtime, "bard", answers, 1, output="choice_then_line")
    for _ in range(3):
        runtime._cycle()
    assert len(runtime.scheduler) == 1 and not answers
    return runtime, clock, gap_end_ns


def test_with_work_queued_lego_admits_in_the_gaps_tail(npc_loaded: LoadedModel) -> None:
    """A request that arrives while another's work is queued does not delay the inter-frame
    gap's next subtask: it is admitted where no subtask fits the rest of the gap."""
    runtime, clock, gap_end_ns = _with_a_line_in_progress(npc_loaded)
    _submit(runtime, "guard", [], 2)
    ran = len(runtime.timeline)
    runtime._cycle()
    assert len(runtime.timeline) > ran  # the queued request's subtask ran first
    assert len(runtime.scheduler) == 1 and runtime.stats()["queue_length"] == 2
    clock.set(gap_end_ns - 100_000)  # less than the dispatch margin is left: the tail
    ran = len(runtime.timeline)
    runtime._cycle()
    assert len(runtime.timeline) == ran and len(runtime.scheduler) == 2


def test_a_request_deferred_in_one_gap_is_admitted_first_in_the_next(
    npc_loaded: LoadedModel,
) -> None:
    """No room for admission in the first gap's tail: at the next gap's start it is admitted
    before any subtask runs."""
    runtime, clock, gap_end_ns = _with_a_line_in_progress(npc_loaded)
    _submit(runtime, "guard", [], 2)
    runtime._cycle()
    runtime._admission_ns = 0.5 * MS  # more than the tail holds
    clock.set(gap_end_ns - 100_000)
    runtime._cycle()
    assert len(runtime.scheduler) == 1
    _event(runtime, FRAME_BEGIN, "", gap_end_ns)
    _event(runtime, PASS_BEGIN, "p0", gap_end_ns)
    _event(runtime, PASS_END, "p0", gap_end_ns + 12 * MS)
    _event(runtime, FRAME_END, "", gap_end_ns + 12 * MS)
    clock.set(gap_end_ns + 12 * MS)  # the next inter-frame gap
    ran = len(runtime.timeline)
    runtime._cycle()
    assert len(runtime.scheduler) == 2
    assert len(runtime.timeline) > ran  # and the gap's subtasks ran after it


def test_a_deferred_request_is_admitted_within_a_frame_budget_of_its_gaps_end(
    npc_loaded: LoadedModel,
) -> None:
    """Deferred and then kept out by a pass longer than a frame, a request is admitted one
    frame budget after the end of the gap it was deferred in, inside the pass."""
    runtime, clock, gap_end_ns = _with_a_line_in_progress(npc_loaded)
    _submit(runtime, "guard", [], 2)
    runtime._cycle()
    assert len(runtime.scheduler) == 1
    _event(runtime, FRAME_BEGIN, "", gap_end_ns)
    _event(runtime, PASS_BEGIN, "p0", gap_end_ns)
    budget_ns = round(SECOND / 60)
    clock.set(gap_end_ns + budget_ns - MS)
    runtime._cycle()
    assert len(runtime.scheduler) == 1
    clock.set(gap_end_ns + budget_ns)
    runtime._cycle()
    assert len(runtime.scheduler) == 2


def test_a_request_that_waited_a_frame_budget_is_admitted_first(
    npc_loaded: LoadedModel,
) -> None:
    """A request that arrived during a pass longer than a frame budget (a hitch), with work
    queued, is admitted at the start of the next inter-frame gap, before its subtasks."""
    runtime, clock, gap_end_ns = _with_a_line_in_progress(npc_loaded)
    _event(runtime, FRAME_BEGIN, "", gap_end_ns)
    _event(runtime, PASS_BEGIN, "p0", gap_end_ns)
    clock.set(gap_end_ns + MS)
    _submit(runtime, "guard", [], 2)
    runtime._cycle()
    assert len(runtime.scheduler) == 1  # inside the pass: it waits for a gap with room
    hitch_end_ns = gap_end_ns + 40 * MS
    _event(runtime, PASS_END, "p0", hitch_end_ns)
    _event(runtime, FRAME_END, "", hitch_end_ns)
    clock.set(hitch_end_ns)
    runtime._cycle()
    assert len(runtime.scheduler) == 2


@pytest.mark.parametrize("where", ["option_off", "static_skip", "intra_frame_gap"])
def test_where_the_tail_rule_does_not_apply_admission_comes_first(
    npc_loaded: LoadedModel, where: str
) -> None:
    """With work queued, admission still comes before the next subtask with the option off,
    under another policy, and in an intra-frame gap."""
    options = {"option_off": {"admission_in_gap_tail": False},
               "static_skip": {"policy": "static_skip"}}.get(where, {})
    runtime, clock, gap_end_ns = _with_a_line_in_progress(npc_loaded, **options)
    if where == "intra_frame_gap":
        _event(runtime, FRAME_BEGIN, "", gap_end_ns)
        _event(runtime, PASS_BEGIN, "p0", gap_end_ns)
        _event(runtime, PASS_END, "p0", gap_end_ns + 4 * MS)
        clock.set(gap_end_ns + 4 * MS)  # the 8 ms gap after p0
    _submit(runtime, "guard", [], 2)
    runtime._cycle()
    assert len(runtime.scheduler) == 2
