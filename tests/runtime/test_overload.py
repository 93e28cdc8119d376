"""When the work does not fit: superseding, fallbacks at the deadline, back-pressure.

The runtime runs on a ManualClock (`runtime_replay`): outcomes are decided by the timestamps
sent, and assertions are on the timestamps, counts and orders that answers and events carry.
"""

from __future__ import annotations

import random

import pytest
from runtime_replay import (
    MS,
    SECOND,
    Delivery,
    frames,
    identity_bundle,
    manual_runtime,
    replay,
)

from lego_embed.errors import InvalidActionSetError, RuntimeConfigError
from lego_embed.model.loading import LoadedModel
from lego_embed.npc.actions import ActionTrie
from lego_embed.runtime.answers import Decision
from lego_embed.runtime.backpressure import BackPressure, OverloadEvent
from lego_embed.runtime.events import FRAME_BEGIN, FRAME_END, PASS_BEGIN, PASS_END, EngineEvent
from lego_embed.runtime.fallback import DEADLINE_PASSED, PREDICTED_MISS, FallbackContext
from lego_embed.tasks.combat.decide import CombatDecider
from lego_embed.tasks.combat.policy import ACTIONS, random_situation
from lego_embed.tasks.combat.request import combat_request


def hitch(t_ns: int, length_ns: int) -> list[Delivery]:
    """A frame whose only pass lasts length_ns, then a 1 ms gap to frame_end."""
    end = t_ns + length_ns
    return [Delivery(t_ns, EngineEvent(FRAME_BEGIN, "", t_ns)),
            Delivery(t_ns, EngineEvent(PASS_BEGIN, "p0", t_ns)),
            Delivery(end, EngineEvent(PASS_END, "p0", end)),
            Delivery(end + MS, EngineEvent(FRAME_END, "", end + MS))]


def by_id(answers: list[Decision]) -> dict[int, Decision]:
    return {d.request_id: d for d in answers}


# ------------------------------------------------------------------------------ superseding
def test_a_new_request_supersedes_the_npcs_waiting_one_at_once(npc_loaded: LoadedModel) -> None:
    runtime, clock = manual_runtime(npc_loaded)
    t = SECOND
    stream = hitch(t, 800 * MS)  # inside the pass nothing runs: requests wait
    stream += [Delivery(t + 100 * MS, None, (2000.0,), npc_id="guard"),
               Delivery(t + 150 * MS, None, (2000.0,), npc_id="archer"),
               Delivery(t + 300 * MS, None, (2000.0,), npc_id="guard"),
               Delivery(t + 400 * MS, None, (2000.0,), npc_id="archer",
                        options={"supersede": False})]
    stream.sort(key=lambda d: d.arrival_ns)
    stream += frames(t + 900 * MS, 60)
    result = replay(runtime, clock, stream)
    first_guard, first_archer, second_guard, second_archer = result.issued
    answers = by_id(result.callback_answers)
    old = answers[first_guard]
    assert (old.status, old.action, old.error) == ("superseded", None, None)
    assert old.latency_ms == pytest.approx(200.0)  # answered when the newer one was admitted
    assert not old.deadline_met
    assert answers[second_guard].status == "decided"
    assert answers[second_guard].action in ACTIONS
    # the archer's second request opted out: both of its requests are decided
    assert answers[first_archer].status == answers[second_archer].status == "decided"
    assert len(result.callback_answers) == 4 and len(result.polled) == 4
    stats = runtime.stats()
    assert stats["superseded"] == 1 and stats["duplicate_answers"] == 0
    assert stats["decisions"] == 3  # superseded answers are not decisions


def test_superseding_reuses_the_prompt_prefix_the_old_request_already_computed(
    npc_loaded: LoadedModel,
) -> None:
    """Prefill in 16-token chunks; the old request finished its first chunk when the NPC asked
    again with a situation that differs only at the end of the prompt: the new request starts
    from those 16 tokens' KV (one chunk less to run) and decides exactly as a fresh run does."""
    rng = random.Random(8)
    state = {**random_situation(rng), "persona": "brute", "allies": 1}
    newer = {**state, "allies": 3}
    chunk_subtasks = 1 + 2 * npc_loaded.num_layers  # embed + attention and FFN per layer
    after_superseding = {}
    for reuse in (True, False):
        runtime, _ = manual_runtime(npc_loaded, prefill_chunk_tokens=16, prefix_min_tokens=16,
                                    prefix_reuse=reuse)
        runtime.submit(combat_request("brute", state, ACTIONS, 5000.0))
        assert runtime.run_until_idle(max_cycles=chunk_subtasks) == chunk_subtasks  # no engine
        second = runtime.submit(combat_request("brute", newer, ACTIONS, 5000.0))
        after_superseding[reuse] = runtime.run_until_idle()
        old, new = runtime.poll()
        assert old.status == "superseded" and new.request_id == second
        assert new.action == CombatDecider(npc_loaded).decide(newer, list(ACTIONS)).action
        assert runtime.stats()["superseded_tokens_reused"] == (16 if reuse else 0)
    assert after_superseding[False] - after_superseding[True] == chunk_subtasks


# ------------------------------------------------------------------------------ fallbacks
def test_a_deadline_passing_during_a_long_hitch_gets_the_fallback_at_the_deadline(
    npc_loaded: LoadedModel,
) -> None:
    runtime, clock = manual_runtime(npc_loaded)
    stream = frames(SECOND, 30)
    t = stream[-1].arrival_ns + 5 * MS
    stream += hitch(t, 2 * SECOND)
    stream.append(Delivery(t + 50 * MS, None, (200.0,), npc_id="guard",
                           options={"fallback": "block"}))
    stream.sort(key=lambda d: d.arrival_ns)
    stream += frames(t + 2 * SECOND + 20 * MS, 60)
    result = replay(runtime, clock, stream)
    (answer,) = result.callback_answers
    assert (answer.status, answer.action, answer.error) == ("fallback", "block", None)
    assert answer.latency_ms == pytest.approx(200.0, abs=1e-6)  # at the deadline, in the hitch
    assert not answer.deadline_met and answer.expected_accuracy is None
    assert result.polled == [answer]  # the model's late answer is discarded
    stats = runtime.stats()
    assert stats["fallbacks"] == 1 and stats["fallbacks_predicted"] == 0
    assert stats["open_requests"] == 0 and stats["queue_length"] == 0
    assert not [s for s, _, _, _ in runtime.timeline if s >= t]  # its work was dropped


def test_a_fallback_callback_is_asked_at_the_deadline_and_corrections_follow(
    npc_loaded: LoadedModel,
) -> None:
    runtime, clock = manual_runtime(npc_loaded)
    asked: list[tuple[int, FallbackContext]] = []

    def fallback(context: FallbackContext) -> str:
        asked.append((clock.peek_ns(), context))
        return "dodge"

    t = SECOND
    stream = hitch(t, SECOND)
    stream.append(Delivery(t + 10 * MS, None, (300.0,), npc_id="duelist",
                           options={"fallback": fallback, "corrections": True}))
    stream.sort(key=lambda d: d.arrival_ns)
    stream += frames(t + SECOND + 20 * MS, 60)
    result = replay(runtime, clock, stream)
    (request_id,) = result.issued
    (answer,) = result.callback_answers[:1]
    assert answer.status == "fallback" and answer.action == "dodge"
    assert answer.latency_ms == pytest.approx(300.0, abs=1e-6)
    ((asked_ns, context),) = asked
    assert asked_ns == t + 10 * MS + 300 * MS
    assert (context.request_id, context.npc_id, context.reason) == (
        request_id, "duelist", DEADLINE_PASSED)
    assert set(context.actions) == set(ACTIONS)
    # the model ran after the hitch; its action comes as a correction, once
    statuses = [d.status for d in result.callback_answers]
    assert statuses == ["fallback", "correction"]
    correction = result.callback_answers[1]
    assert correction.action in ACTIONS and correction.latency_ms >= 990.0  # after the hitch
    assert [d.status for d in result.polled] == ["fallback", "correction"]
    stats = runtime.stats()
    assert stats["corrections"] == 1 and stats["duplicate_answers"] == 0


def test_a_request_predicted_to_miss_is_dropped_and_gets_its_fallback_at_the_deadline(
    npc_loaded: LoadedModel,
) -> None:
    """A renderer leaving 0.05 ms gaps: after the first windows the predicted headroom cannot
    hold the request before its deadline, so its compute goes to others at once and the
    callback is told why."""
    runtime, clock = manual_runtime(npc_loaded, window_ms=100.0)
    reasons: list[str] = []

    def fallback(context: FallbackContext) -> str:
        reasons.append(context.reason)
        return "retreat"

    stream = frames(SECOND, 60, passes=1, pass_ns=16_600_000, gap_ns=50_000)
    ask_ns = SECOND + 500 * MS
    stream.append(Delivery(ask_ns, None, (150.0,), npc_id="coward",
                           options={"fallback": fallback}))
    stream.sort(key=lambda d: d.arrival_ns)
    result = replay(runtime, clock, stream, settle_ns=())
    (answer,) = result.callback_answers
    assert answer.status == "fallback" and answer.action == "retreat"
    assert answer.latency_ms == pytest.approx(150.0, abs=1e-6)
    assert reasons == [PREDICTED_MISS]
    stats = runtime.stats()
    assert stats["fallbacks_predicted"] == 1 and stats["queue_length"] == 0
    assert not runtime.timeline  # nothing of it ran


def test_bad_fallbacks_are_refused_or_answered_as_failures(npc_loaded: LoadedModel) -> None:
    runtime, clock = manual_runtime(npc_loaded)
    state = random_situation(random.Random(1))
    with pytest.raises(InvalidActionSetError, match="fallback 'fly'"):
        runtime.submit(combat_request("npc", state, ACTIONS, 100.0, fallback="fly"))
    with pytest.raises(InvalidActionSetError, match="allowed actions"):
        runtime.submit(combat_request("npc", state, ACTIONS, 100.0, fallback=3))
    with pytest.raises(RuntimeConfigError, match="supersede"):
        runtime.submit(combat_request("npc", state, ACTIONS, 100.0, supersede="yes"))

    def broken(context: FallbackContext) -> str:
        raise KeyError("the game's bug")

    t = SECOND
    stream = hitch(t, SECOND)
    stream += [Delivery(t + MS, None, (100.0,), npc_id="a", options={"fallback": broken}),
               Delivery(t + MS, None, (100.0,), npc_id="b",
                        options={"fallback": lambda context: "fly"})]
    stream.sort(key=lambda d: d.arrival_ns)
    result = replay(runtime, clock, stream)
    first, second = sorted(result.callback_answers, key=lambda d: d.request_id)
    assert first.status == "failed" and first.error.startswith("KeyError")
    assert second.status == "failed" and "'fly'" in second.error
    assert first.latency_ms == pytest.approx(100.0, abs=1e-6)
    assert runtime.stats()["fallback_errors"] == 2


# ------------------------------------------------------------------------------ back-pressure
def test_back_pressure_arithmetic() -> None:
    pressure = BackPressure(window_ms=100.0)
    pressure.note_costs([4 * MS, 2 * MS])  # a decision: 4 ms at level 0, 2 ms at level 1
    for _ in range(3):
        pressure.note_window(headroom_ms=50.0, usable_fraction=0.5)
    # 50% headroom x 50% usable = 250 ms of compute per s
    assert pressure.sustainable_per_s() == pytest.approx([62.5, 125.0])
    for k in range(260):  # 130 requests per s for 2 s
        pressure.note_request(SECOND + k * round(SECOND / 130))
    event = pressure.on_window(3 * SECOND)
    assert isinstance(event, OverloadEvent) and event.overloaded
    assert event.demand_per_s == pytest.approx(130.0, rel=0.01)
    assert event.sustainable_per_s == pytest.approx(125.0)
    assert event.full_model_per_s == pytest.approx(62.5)
    assert event.target_per_s == pytest.approx(0.85 * 125.0)
    assert pressure.on_window(3 * SECOND + 100 * MS) is None  # still overloaded: no new event
    assert pressure.needs_skipping(3 * SECOND)  # 130 per s > 62.5 per s at the full model
    recovered = pressure.on_window(6 * SECOND)  # nobody asked for 2 s
    assert recovered is not None and not recovered.overloaded and recovered.demand_per_s == 0
    assert not pressure.needs_skipping(6 * SECOND)
    for k in range(100):  # 50 requests per s for 2 s: the full model keeps up
        pressure.note_request(7 * SECOND + k * round(SECOND / 50))
    assert not pressure.needs_skipping(9 * SECOND)  # 50 < 62.5
    for k in range(120):  # then 120 per s: (50 + 120) / 2 s = 85 per s, above the full model's
        pressure.note_request(9 * SECOND + k * round(SECOND / 120))  # rate, not level 1's
    assert pressure.needs_skipping(10 * SECOND) and pressure.on_window(10 * SECOND) is None


def test_rates_count_the_tokens_decisions_take_and_skipping_the_planned_ones() -> None:
    """A combat decision planned for 4 tokens costs 8 ms at level 0 and 4 ms at level 1, a
    decode step 2 and 1 ms: answered after 1 token, it cost 3 steps less. A line planned for 1
    token (3 and 1.5 ms) and answered after 11 cost 10 steps more."""
    pressure = BackPressure(window_ms=100.0)
    combat = [8 * MS, 4 * MS]
    pressure.note_costs(combat)
    pressure.note_window(headroom_ms=50.0, usable_fraction=0.5)  # 250 ms of compute per s
    pressure.note_answer(combat, planned_tokens=4, tokens=1)  # no step costs yet: ignored
    assert pressure.costs_ns() == combat
    pressure.note_decode_steps([2 * MS, 1 * MS])
    pressure.note_answer(combat, planned_tokens=4, tokens=1)
    assert pressure.costs_ns() == pytest.approx([2 * MS, 1 * MS])
    assert pressure.sustainable_per_s() == pytest.approx([125.0, 250.0])
    assert pressure.planned_per_s() == pytest.approx([31.25, 62.5])
    for k in range(200):  # 100 requests per s for 2 s
        pressure.note_request(SECOND + k * 10 * MS)
    assert pressure.needs_skipping(3 * SECOND)  # above the planned full model's 31.25 per s
    assert pressure.on_window(3 * SECOND) is None  # below what decisions take at level 1
    snapshot = pressure.snapshot(3 * SECOND)
    assert snapshot["sustainable_per_s_by_level"] == pytest.approx([125.0, 250.0])
    assert snapshot["planned_per_s_by_level"] == pytest.approx([31.25, 62.5])
    pressure.note_answer([3 * MS, 1.5 * MS], planned_tokens=1, tokens=11)  # 23 and 11.5 ms
    assert pressure.costs_ns() == pytest.approx([6.2 * MS, 3.1 * MS])  # moved 0.2 of the way
    pressure.note_answer([MS, MS], planned_tokens=4, tokens=1)  # a plan shorter than its steps
    assert pressure.costs_ns() == pytest.approx([6.2 * MS, 3.1 * MS])  # is not a cost


def test_the_window_level_floor_is_the_smallest_level_that_sustains_the_demand() -> None:
    """Decisions cost 4 / 2 / 1 ms at levels 0 / 1 / 2 and 250 ms of compute a second is
    usable: 62.5 / 125 / 250 decisions a second. The floor is the first level whose rate covers
    the demand with 10% to spare, the largest when none does, and 0 before any cost is known."""

    def floor_at(per_s: int) -> int:
        pressure = BackPressure(window_ms=100.0)
        if per_s:
            pressure.note_costs([4 * MS, 2 * MS, MS])
            pressure.note_window(headroom_ms=50.0, usable_fraction=0.5)
        for k in range(2 * per_s):
            pressure.note_request(SECOND + k * round(SECOND / per_s))
        return pressure.sustaining_level(3 * SECOND)

    assert floor_at(0) == 0
    assert [floor_at(per_s) for per_s in (50, 60, 110, 120, 220, 240)] == [0, 1, 1, 2, 2, 2]
    assert floor_at(1000) == 2


def test_the_runtime_raises_its_level_floor_under_overload(
    npc_loaded: LoadedModel,
) -> None:
    """The overload of the test below, with three skip levels: while 50 requests a second ask
    for more than any level sustains, the runtime sets the scheduler's floor to the largest
    level (the scheduler's tests check that no level is chosen below it). Where it goes once
    the demand is gone depends on subtask costs measured on this machine, so it is not
    asserted here. With the option off the floor never moves, under load or after."""
    bundle = identity_bundle(npc_loaded, [(1, 2), (1, 4), (1, 6)])
    heavy = frames(SECOND, 180, passes=1, pass_ns=16_500_000, gap_ns=50_000)  # 3 s
    light_start = 4 * SECOND
    light = frames(light_start, 180, passes=2, pass_ns=4 * MS, gap_ns=MS)  # 3 s
    asks = [Delivery(SECOND + k * 20 * MS, None, (100.0,), npc_id=f"npc{k % 5}",
                     options={"fallback": "block"}) for k in range(100)]  # 50/s for 2 s
    late = [Delivery(light_start + SECOND + k * 500 * MS, None, (500.0,), npc_id=f"calm{k}")
            for k in range(3)]
    floors = {}
    for option in (True, False):
        runtime, clock = manual_runtime(npc_loaded, bundle, window_ms=100.0,
                                        window_level_floor=option)
        replay(runtime, clock, sorted(heavy + asks, key=lambda d: d.arrival_ns), settle_ns=())
        under_load = runtime.stats()["level_floor"]
        replay(runtime, clock, sorted(light + late, key=lambda d: d.arrival_ns), settle_ns=())
        floors[option] = (under_load, runtime.stats()["level_floor"])
    assert floors[True][0] == 3  # where it falls to after: measured subtask costs (the unit
    assert floors[False] == (0, 0)  # test above checks the arithmetic)


def test_a_request_made_while_the_engine_is_silent_runs_at_the_full_model(
    npc_loaded: LoadedModel,
) -> None:
    """After the overload above has raised the floor to the largest level and the predicted
    headroom to almost nothing, the engine stops sending events in a gap (window minimised):
    there is no renderer to protect, so a request asked a second later is neither held at the
    stale floor nor judged against the stale headroom; it runs at the full model."""
    bundle = identity_bundle(npc_loaded, [(1, 2), (1, 4), (1, 6)])
    heavy = frames(SECOND, 180, passes=1, pass_ns=16_500_000, gap_ns=50_000)  # 3 s
    asks = [Delivery(SECOND + k * 20 * MS, None, (100.0,), npc_id=f"npc{k % 5}",
                     options={"fallback": "block"}) for k in range(100)]  # 50/s for 2 s
    runtime, clock = manual_runtime(npc_loaded, bundle, window_ms=100.0)
    replay(runtime, clock, sorted(heavy + asks, key=lambda d: d.arrival_ns), settle_ns=())
    assert runtime.stats()["level_floor"] == 3
    quiet_ask = Delivery(heavy[-1].arrival_ns + SECOND, None, (500.0,), npc_id="npc0",
                         options={"fallback": "block"})
    result = replay(runtime, clock, [quiet_ask])
    (answer,) = result.callback_answers
    assert answer.status == "decided" and answer.skip_level == 0
    assert runtime.stats()["level_floor"] == 0


def test_overloaded_fires_when_demand_exceeds_the_sustainable_rate_and_again_on_recovery(
    npc_loaded: LoadedModel,
) -> None:
    """A renderer that leaves ~1% of the time idle and 5 NPCs asking 50 times a second for 3 s:
    far more than any skip level sustains (nothing even fits its gaps, so the rate comes from
    the starting cost model, not from this machine's speed). Then they stop asking: the demand
    over the last 2 s falls and the runtime recovers. A lighter renderer with one request a
    second after that stays below the sustainable rate. Events come at window ends, in order."""
    runtime, clock = manual_runtime(npc_loaded, window_ms=100.0)
    heavy = frames(SECOND, 360, passes=1, pass_ns=16_500_000, gap_ns=50_000)  # 6 s
    light_start = SECOND + 6 * SECOND
    light = frames(light_start, 180, passes=2, pass_ns=4 * MS, gap_ns=MS)  # 3 s
    asks = [Delivery(SECOND + k * 20 * MS, None, (100.0,), npc_id=f"npc{k % 5}",
                     options={"fallback": "block"}) for k in range(150)]  # 50/s for 3 s
    last_heavy_ask = asks[-1].arrival_ns
    asks += [Delivery(light_start + k * SECOND, None, (500.0,), npc_id="npc0",
                      options={"fallback": "block"}) for k in range(3)]  # 1/s
    stream = sorted(heavy + light + asks, key=lambda d: d.arrival_ns)
    result = replay(runtime, clock, stream, settle_ns=())
    events = runtime.poll_overload()
    assert [e.overloaded for e in events] == [True, False]
    on, off = events
    assert SECOND < on.t_ns < last_heavy_ask < off.t_ns < light_start
    assert (on.t_ns - SECOND) % (100 * MS) == 0 and (off.t_ns - SECOND) % (100 * MS) == 0
    assert on.demand_per_s > on.sustainable_per_s > on.target_per_s > 0
    assert on.full_model_per_s <= on.sustainable_per_s
    assert off.demand_per_s < 0.9 * off.sustainable_per_s
    assert runtime.poll_overload() == []
    stats = runtime.stats()
    assert stats["overload_events"] == 2 and not stats["backpressure"]["overloaded"]
    assert len(stats["backpressure"]["sustainable_per_s_by_level"]) == 1
    assert len(result.callback_answers) == len(result.issued)  # every request answered


def test_the_sustainable_rate_counts_the_tokens_combat_decisions_take(
    npc_loaded: LoadedModel,
) -> None:
    """Combat decisions are planned for the action trie's full depth, but decoding stops once
    one action is left: after the first answers, the rate the game is told counts the tokens
    the answers took, and is above the scheduler's own rate (planned, with its margin)."""
    runtime, clock = manual_runtime(npc_loaded, window_ms=100.0)
    stream = frames(SECOND, 120, passes=2, pass_ns=4 * MS, gap_ns=MS)
    stream += [Delivery(SECOND + k * 100 * MS, None, (500.0,), npc_id=f"npc{k % 2}")
               for k in range(16)]
    stream.sort(key=lambda d: d.arrival_ns)
    result = replay(runtime, clock, stream)
    answers = result.callback_answers
    assert len(answers) == 16 and all(d.status == "decided" for d in answers)
    tokenizer = npc_loaded.tokenizer
    planned = ActionTrie(tokenizer, ACTIONS, tokenizer.eos_token_id).max_tokens
    assert max(d.tokens for d in answers) < planned  # decoding stopped early: a margin exists
    state = runtime.backpressure.snapshot(clock.peek_ns())
    sustainable, as_planned = state["sustainable_per_s_by_level"], state["planned_per_s_by_level"]
    assert len(sustainable) == len(as_planned) == len(runtime.levels)
    assert all(s > p for s, p in zip(sustainable, as_planned, strict=True))

