"""The Runtime API end to end on a real (small, random) model: request, callback, poll, stats."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from runtime_replay import MS, SECOND, Delivery, flat_cost_profile, manual_runtime, replay
from waiting import wait_for

from lego_embed.engines.trace_replay import simulate_frames
from lego_embed.errors import InvalidActionSetError, InvalidGameStateError, RuntimeConfigError
from lego_embed.model.loading import LoadedModel
from lego_embed.runtime.runtime import Decision, Runtime, RuntimeConfig
from lego_embed.tasks.combat.decide import CombatDecider
from lego_embed.tasks.combat.policy import ACTIONS, random_situation
from lego_embed.tasks.combat.request import combat_request


def test_requests_are_answered_with_allowed_actions(npc_loaded: LoadedModel) -> None:
    runtime = Runtime(npc_loaded, config=RuntimeConfig(policy="lego", prefix_min_tokens=1))
    called: list[Decision] = []
    runtime.start()
    try:
        rng = random.Random(3)
        actions = list(ACTIONS[:5])
        states = [{**random_situation(rng), "persona": "brute"} for _ in range(4)]
        ids = [runtime.submit(combat_request("npc0", states[0], actions, 2000.0,
                                             callback=called.append))]
        decisions = wait_for(runtime, 1)
        ids += [  # npc0 and npc1 ask twice: both answers wanted, none superseded
            runtime.submit(combat_request(f"npc{i % 2}", state, actions, 2000.0,
                                          callback=called.append, supersede=False))
            for i, state in enumerate(states[1:])
        ]
        decisions += wait_for(runtime, 3)
    finally:
        runtime.stop()
    assert sorted(d.request_id for d in decisions) == sorted(ids)
    assert all(d.action in actions and d.error is None for d in decisions)
    assert {d.request_id for d in called} == set(ids)
    assert all(d.deadline_ms == 2000.0 and d.tokens >= 1 for d in decisions)
    stats = runtime.stats()
    assert stats["decisions"] == 4
    assert stats["prefix_hits"] >= 1  # the second request of each NPC reuses its persona prefix
    assert stats["gpu"]["nvml"].startswith("NVML unavailable")
    # scheduled, prefix-reusing decisions equal the plain run-to-completion reference
    reference = CombatDecider(npc_loaded)
    by_id = {d.request_id: d for d in decisions}
    for request_id, state in zip(ids, states, strict=True):
        assert by_id[request_id].action == reference.decide(state, actions).action


def test_bad_input_is_rejected_synchronously(npc_loaded: LoadedModel) -> None:
    runtime = Runtime(npc_loaded, config=RuntimeConfig(warmup=False))
    state = random_situation(random.Random(0))
    with pytest.raises(InvalidGameStateError, match="hp"):
        runtime.submit(combat_request("npc", {**state, "hp": float("nan")}, ACTIONS, 300.0))
    with pytest.raises(InvalidActionSetError):
        runtime.submit(combat_request("npc", state, [], 300.0))
    with pytest.raises(RuntimeConfigError):
        runtime.submit(combat_request("npc", state, ACTIONS, 0.0))
    with pytest.raises(RuntimeConfigError, match="Request"):
        runtime.submit(state)
    with pytest.raises(RuntimeConfigError, match="policy"):
        Runtime(npc_loaded, config=RuntimeConfig(policy="greedy"))
    with pytest.raises(RuntimeConfigError, match="deadline_ms"):
        runtime.submit(combat_request("npc", state, ACTIONS, float("inf")))
    for bad in ({"window_ms": 1e-9}, {"margin_us": float("nan")},
                {"frame_budget_ms": float("inf")}, {"max_worker_restarts": -1},
                {"gap_deviations": -1.0}):
        with pytest.raises(RuntimeConfigError, match=next(iter(bad))):
            Runtime(npc_loaded, config=RuntimeConfig(**bad))
    assert runtime.poll() == []


def test_lego_policy_runs_only_in_gaps_of_a_reporting_engine(
    npc_loaded: LoadedModel, tmp_path: Path
) -> None:
    """A simulated 60 FPS renderer replayed on the runtime's own (manual) clock, so the event
    timestamps alone decide: every subtask starts in a gap and all three requests are answered.
    (It ran in real time before, and a loaded machine delivering a pass_begin late failed it;
    then a warm-up measured on a busy machine made a subtask look longer than any gap.)"""
    profile = flat_cost_profile(str(tmp_path / "profile.json"))
    runtime, clock = manual_runtime(npc_loaded, policy="lego", cost_profile=profile)
    origin_ns = SECOND
    frames = list(simulate_frames([9.0] * 90, origin_ns=origin_ns))
    busy_spans = [(s, e) for record, _ in frames for _, s, e in record.pass_spans_ns]
    deliveries = [Delivery(event.t_ns, event) for _, events in frames for event in events]
    deliveries.append(Delivery(origin_ns + 100 * MS, None, (1200.0, 1200.0, 1200.0)))
    deliveries.sort(key=lambda delivery: delivery.arrival_ns)
    result = replay(runtime, clock, deliveries, seed=5, settle_ns=())
    assert len(result.callback_answers) == 3
    assert all(d.action in ACTIONS for d in result.callback_answers)
    starts = [s for s, _, _, _ in runtime.timeline]
    assert starts and min(starts) >= origin_ns + 100 * MS
    inside_pass = [s for s in starts if any(b <= s < e for b, e in busy_spans)]
    # no subtask may be launched while a (simulated) pass runs
    assert not inside_pass


def test_poll_with_a_timeout_waits_for_the_first_answer(npc_loaded: LoadedModel) -> None:
    runtime = Runtime(npc_loaded, config=RuntimeConfig(warmup=False))
    runtime.start()
    try:
        assert runtime.poll() == []  # the default never waits
        situation = random_situation(random.Random(7))
        request_id = runtime.submit(combat_request("npc", situation, ACTIONS, 60000.0))
        answers = runtime.poll(timeout_s=120.0)  # one call: returns once the worker answered
    finally:
        runtime.stop()
    assert [d.request_id for d in answers] == [request_id]
    assert answers[0].action in ACTIONS


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="no SCHED_BATCH on this OS")
@pytest.mark.parametrize("yields", [False, True])
def test_a_yielding_worker_runs_under_sched_batch(npc_loaded: LoadedModel, yields: bool) -> None:
    """worker_yields puts the worker thread (and only it) under SCHED_BATCH, so waking it
    never preempts a running game thread; the thread sets it before its first turn."""
    callers = os.sched_getscheduler(0)
    runtime = Runtime(npc_loaded, config=RuntimeConfig(warmup=False, worker_yields=yields))
    runtime.start()
    try:
        runtime.submit(combat_request("guard", random_situation(random.Random(2)), ACTIONS,
                                      60_000.0))
        assert len(wait_for(runtime, 1)) == 1
        expected = os.SCHED_BATCH if yields else callers  # else inherited from the caller
        assert os.sched_getscheduler(runtime._thread.native_id) == expected
        assert os.sched_getscheduler(0) == callers  # the caller's thread is untouched
    finally:
        runtime.stop()
