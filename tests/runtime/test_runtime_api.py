"""The Runtime API end to end on a real (small, random) model: request, callback, poll, stats."""

from __future__ import annotations

import random
import threading
import time

import pytest

from lego_embed.engines.trace_replay import simulate_frames
from lego_embed.errors import InvalidActionSetError, InvalidGameStateError, RuntimeConfigError
from lego_embed.model.loading import LoadedModel
from lego_embed.runtime.events import EngineEvent
from lego_embed.runtime.runtime import Decision, Runtime, RuntimeConfig
from lego_embed.tasks.combat.decide import CombatDecider
from lego_embed.tasks.combat.policy import ACTIONS, random_situation
from lego_embed.tasks.combat.request import combat_request


def wait_for(runtime: Runtime, count: int, timeout_s: float = 60.0) -> list[Decision]:
    decisions: list[Decision] = []
    stop = time.monotonic() + timeout_s
    while len(decisions) < count and time.monotonic() < stop:
        decisions += runtime.poll()
        time.sleep(0.01)
    return decisions


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
        ids += [
            runtime.submit(combat_request(f"npc{i % 2}", state, actions, 2000.0,
                                          callback=called.append))
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
    assert runtime.poll() == []


def test_lego_policy_runs_only_in_gaps_of_a_reporting_engine(npc_loaded: LoadedModel) -> None:
    """Feeds a simulated 60 FPS renderer in real time; every subtask must start inside a gap.

    A pass counts as begun when its pass_begin reached the runtime (a sleeping engine thread
    can deliver it after the event's own timestamp; the runtime cannot know of it earlier)."""
    runtime = Runtime(npc_loaded, config=RuntimeConfig(policy="lego", record_timeline=True))
    runtime.start()
    origin_ns = time.monotonic_ns() + 20_000_000
    frames = list(simulate_frames([9.0] * 90, origin_ns=origin_ns))
    pass_ends = {b: e for record, _ in frames for _, b, e in record.pass_spans_ns}
    busy_spans: list[tuple[int, int]] = []

    def engine() -> None:
        for _, events in frames:
            for event in events:
                delay_ns = event.t_ns - time.monotonic_ns()
                if delay_ns > 0:
                    time.sleep(delay_ns / 1e9)
                runtime.on_event(EngineEvent(event.kind, event.name, event.t_ns))
                if event.kind == "pass_begin":
                    busy_spans.append((time.monotonic_ns(), pass_ends[event.t_ns]))

    thread = threading.Thread(target=engine)
    thread.start()
    time.sleep(0.1)
    rng = random.Random(5)
    for i in range(3):
        runtime.submit(combat_request(f"npc{i}", random_situation(rng), ACTIONS, 1200.0))
    decisions = wait_for(runtime, 3, timeout_s=30.0)
    thread.join()
    runtime.stop()
    assert len(decisions) == 3
    assert runtime.timeline
    frame_starts = [s for s, _, _, _ in runtime.timeline if s > origin_ns]
    inside_pass = [
        s for s in frame_starts if any(b <= s < e for b, e in busy_spans)
    ]
    # no subtask may be launched while a (simulated) pass runs
    assert not inside_pass
