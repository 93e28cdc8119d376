"""Supervision: the worker survives hitches and its own faults; every request gets one answer.

Most tests drive the runtime deterministically (ManualClock, `run_until_idle`): timestamps
decide the outcome, not the machine's speed. Faults are injected by replacing a component
class of the worker with one that raises, which a real bug would do just the same.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time

import pytest
from runtime_replay import MS, SECOND, Delivery, frames, manual_runtime, replay
from waiting import wait_for

import lego_embed.runtime.runtime as runtime_module
from lego_embed.errors import RuntimeConfigError, RuntimeFailedError, RuntimeStoppedError
from lego_embed.model.loading import LoadedModel
from lego_embed.runtime.answers import Decision
from lego_embed.runtime.events import FRAME_BEGIN, FRAME_END, PASS_BEGIN, PASS_END, EngineEvent
from lego_embed.runtime.predictor import HeadroomPredictor
from lego_embed.runtime.runtime import Runtime, RuntimeConfig
from lego_embed.tasks.combat.policy import ACTIONS, random_situation
from lego_embed.tasks.combat.request import combat_request


def hitch(t_ns: int, length_ns: int, name: str = "p0") -> list[Delivery]:
    """One frame whose first pass lasts `length_ns` (shader compilation, asset streaming)."""
    end = t_ns + length_ns
    return [
        Delivery(t_ns, EngineEvent(FRAME_BEGIN, "", t_ns)),
        Delivery(t_ns, EngineEvent(PASS_BEGIN, name, t_ns)),
        Delivery(end, EngineEvent(PASS_END, name, end)),
        Delivery(end + MS, EngineEvent(FRAME_END, "", end + MS)),
    ]


def assert_answered_once(result, runtime: Runtime) -> None:
    ids = [d.request_id for d in result.callback_answers]
    assert sorted(ids) == sorted(result.issued) and len(set(ids)) == len(ids)
    assert sorted(d.request_id for d in result.polled) == sorted(result.issued)
    json.dumps(runtime.stats(), allow_nan=False)  # no NaN or infinity anywhere


def test_a_game_that_starts_with_a_hitch_gets_its_decisions(npc_loaded: LoadedModel) -> None:
    """The issue's crash: windows without headroom make the predicted headroom rate 0, and a
    request that never waited divided by it (ZeroDivisionError killed the worker)."""
    runtime, clock = manual_runtime(npc_loaded, window_ms=300.0)
    t0 = SECOND
    stream = hitch(t0, 1200 * MS)  # 4 windows with no headroom at all
    after = t0 + 1300 * MS
    stream += [Delivery(after, None, (2000.0,))]
    stream += frames(after + MS, 120)
    result = replay(runtime, clock, stream)
    assert runtime.headroom_rate() >= 0.0
    health = runtime.health()
    assert health.state == "running" and health.restarts == 0, health
    stats = runtime.stats()
    assert stats["errors"] == 0 and stats["worker_faults"] == 0
    (decision,) = result.callback_answers
    assert decision.action in ACTIONS and decision.error is None
    assert_answered_once(result, runtime)


def test_a_long_pass_blocks_the_worker_however_long_the_engine_is_silent(
    npc_loaded: LoadedModel,
) -> None:
    """A 3 s hitch inside a pass: nothing starts until pass_end (the silence rule is for gaps);
    the request asked before the hitch is decided right after it, late."""
    runtime, clock = manual_runtime(npc_loaded)
    stream = frames(SECOND, 30)
    t = stream[-1].arrival_ns + 5 * MS
    stream += [Delivery(t, EngineEvent(FRAME_BEGIN, "", t)),
               Delivery(t, EngineEvent(PASS_BEGIN, "p0", t), (100.0,))]
    end = t + 3 * SECOND
    stream += [Delivery(end, EngineEvent(PASS_END, "p0", end)),
               Delivery(end + MS, EngineEvent(FRAME_END, "", end + MS))]
    stream += frames(end + 20 * MS, 60)
    result = replay(runtime, clock, stream)
    assert not result.subtasks_in_open_pass
    (decision,) = result.callback_answers
    assert decision.action in ACTIONS and not decision.deadline_met
    starts = [start for start, _, _, _ in runtime.timeline]
    assert min(starts) >= end  # in the hitch's pass nothing ran, though it was silent 3 s
    assert_answered_once(result, runtime)


def test_a_pass_that_never_ends_fails_its_requests_long_after_their_deadline(
    npc_loaded: LoadedModel,
) -> None:
    runtime, clock = manual_runtime(npc_loaded, overdue_limit_ms=5000.0)
    t = SECOND
    stream = [Delivery(t, EngineEvent(FRAME_BEGIN, "", t)),
              Delivery(t, EngineEvent(PASS_BEGIN, "p0", t), (200.0, 20_000.0))]
    result = replay(runtime, clock, stream, settle_ns=(4 * SECOND, 2 * SECOND, 40 * SECOND))
    first, second = sorted(result.callback_answers, key=lambda d: d.request_id)
    # 200 ms deadline: failed once 5 s past it; 20 s deadline: once 20 s past it
    assert first.action is None and first.error.startswith("RequestOverdueError")
    assert "inside a render pass" in first.error
    assert 5200 < first.latency_ms <= 5200 + 2000 + 300
    assert second.error.startswith("RequestOverdueError") and second.latency_ms > 40_000
    assert runtime.stats()["overdue_requests"] == 2
    assert runtime.health().state == "running"
    assert_answered_once(result, runtime)


def test_gaps_too_short_for_any_subtask_fail_requests_with_the_numbers(
    npc_loaded: LoadedModel,
) -> None:
    """A renderer that leaves ~0.1 ms gaps: nothing ever fits; the overdue failure says why."""
    runtime, clock = manual_runtime(npc_loaded)
    stream = frames(SECOND, 400, passes=1, pass_ns=16_500_000, gap_ns=50_000)
    stream.append(Delivery(SECOND + 5 * MS, None, (100.0,)))
    stream.sort(key=lambda delivery: delivery.arrival_ns)
    result = replay(runtime, clock, stream, settle_ns=())
    (failure,) = result.callback_answers
    assert failure.error.startswith("RequestOverdueError") and not runtime.timeline
    assert "next subtask is predicted at 0.20 ms" in failure.error
    assert "longest gap averages 0.12 ms" in failure.error
    assert_answered_once(result, runtime)


class FaultyOnce(HeadroomPredictor):
    """A predictor with a bug that shows once: its first observation raises."""

    faults = 0
    faulted = threading.Event()  # set when it raised (for the real worker thread)

    def observe(self, total_ms: float) -> None:
        if FaultyOnce.faults == 0:
            FaultyOnce.faults += 1
            FaultyOnce.faulted.set()
            raise ArithmeticError("injected fault")
        super().observe(total_ms)


class AlwaysFaulty(HeadroomPredictor):
    """A predictor with a bug that shows at every window."""

    def observe(self, total_ms: float) -> None:
        raise ArithmeticError("injected fault")


def test_a_fault_fails_the_requests_in_flight_and_the_worker_restarts(
    npc_loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(runtime_module, "HeadroomPredictor", FaultyOnce)
    FaultyOnce.faults = 0
    runtime, clock = manual_runtime(npc_loaded, window_ms=100.0)
    # a request admitted in a gap (an unseen gap: nothing fits it) waits through a long pass;
    # the first window closes at that pass's end and the fault hits
    start = SECOND
    stream = [Delivery(start, EngineEvent(FRAME_BEGIN, "", start)),
              Delivery(start, EngineEvent(PASS_BEGIN, "p0", start)),
              Delivery(start + MS, EngineEvent(PASS_END, "p0", start + MS), (5000.0,)),
              Delivery(start + 2 * MS, EngineEvent(PASS_BEGIN, "p1", start + 2 * MS))]
    stream += frames(start + 150 * MS, 30)
    later = stream[-1].arrival_ns + MS
    stream += [Delivery(later, None, (5000.0,))] + frames(later + MS, 30)
    with caplog.at_level(logging.ERROR, logger="lego_embed.runtime"):
        result = replay(runtime, clock, stream)
    failed, decided = sorted(result.callback_answers, key=lambda d: d.request_id)
    assert failed.action is None and failed.error.startswith("WorkerFaultError")
    assert "ArithmeticError: injected fault" in failed.error
    assert decided.action in ACTIONS and decided.error is None
    health = runtime.health()
    assert (health.state, health.restarts) == ("running", 1)
    assert health.last_error == "ArithmeticError: injected fault"
    stats = runtime.stats()
    assert stats["worker_faults"] == 1 and stats["errors"] == 1
    assert stats["health"]["restarts"] == 1
    records = [r for r in caplog.records if "NPC worker hit" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is not None  # logged once, traceback
    assert_answered_once(result, runtime)


def test_repeated_faults_stop_the_worker_and_requests_are_refused_at_once(
    npc_loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime_module, "HeadroomPredictor", AlwaysFaulty)
    runtime, clock = manual_runtime(npc_loaded, window_ms=100.0, max_worker_restarts=2)
    # the request, admitted in a gap, waits in a pass whose end closes the first window: it
    # is in flight then
    end = SECOND + 500 * MS
    stream = [Delivery(SECOND, EngineEvent(FRAME_BEGIN, "", SECOND)),
              Delivery(SECOND, EngineEvent(PASS_BEGIN, "p0", SECOND)),
              Delivery(SECOND + MS, EngineEvent(PASS_END, "p0", SECOND + MS), (60_000.0,)),
              Delivery(SECOND + 2 * MS, EngineEvent(PASS_BEGIN, "p1", SECOND + 2 * MS)),
              Delivery(end, EngineEvent(PASS_END, "p1", end))]
    stream += frames(end + MS, 60)
    result = replay(runtime, clock, stream, settle_ns=())
    health = runtime.health()
    assert health.state == "failed" and health.restarts == 2
    (answer,) = result.callback_answers
    assert answer.action is None and answer.error.startswith("WorkerFaultError")
    with pytest.raises(RuntimeFailedError, match="faulted more than 2 times"):
        runtime.submit(combat_request("npc", random_situation(random.Random(1)), ACTIONS, 300.0))
    with pytest.raises(RuntimeConfigError, match="failed"):
        runtime.run_until_idle()
    assert runtime.stats()["worker_faults"] == 3
    assert_answered_once(result, runtime)


def test_a_raising_callback_is_counted_and_the_worker_goes_on(npc_loaded: LoadedModel) -> None:
    runtime, clock = manual_runtime(npc_loaded)
    answers: list[Decision] = []

    def bad_callback(decision: Decision) -> None:
        answers.append(decision)
        raise KeyError("the game's bug")

    rng = random.Random(2)
    ids = [runtime.submit(combat_request("npc", random_situation(rng), ACTIONS, 1000.0,
                                         callback=bad_callback))
           for _ in range(3)]
    runtime.run_until_idle()  # no engine events: nothing to protect, runs freely
    assert sorted(d.request_id for d in answers) == ids
    assert sorted(d.request_id for d in runtime.poll()) == ids
    stats = runtime.stats()
    assert stats["callback_errors"] == 3 and stats["health"]["state"] == "running"


def test_stop_answers_every_open_request_and_later_requests_are_refused(
    npc_loaded: LoadedModel,
) -> None:
    runtime, clock = manual_runtime(npc_loaded)
    for delivery in frames(SECOND, 1)[:2]:  # inside a pass: nothing may run
        runtime.on_event(delivery.event)
    state = random_situation(random.Random(3))
    request_id = runtime.submit(combat_request("npc", state, ACTIONS, 300.0))
    runtime.run_until_idle()
    runtime.stop()
    (answer,) = runtime.poll()
    assert answer.request_id == request_id and answer.error.startswith("RuntimeStoppedError")
    with pytest.raises(RuntimeStoppedError, match="start"):
        runtime.submit(combat_request("npc", state, ACTIONS, 300.0))
    assert runtime.health().state == "stopped"


def test_the_worker_thread_restarts_after_a_fault(
    npc_loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same supervision on the real worker thread and clock: waits for answers (counts),
    never for a time."""
    monkeypatch.setattr(runtime_module, "HeadroomPredictor", FaultyOnce)
    FaultyOnce.faults = 0
    FaultyOnce.faulted.clear()
    runtime = Runtime(npc_loaded, config=RuntimeConfig(warmup=False, window_ms=50.0))
    runtime.start()
    answers: list[Decision] = []
    try:
        rng = random.Random(4)
        start_ns = time.monotonic_ns()
        for k in range(6):  # frames stamped 20 ms apart: the first 50 ms window to close faults
            runtime.on_event(EngineEvent(FRAME_BEGIN, "", start_ns + k * 20_000_000))
            runtime.on_event(EngineEvent(FRAME_END, "", start_ns + k * 20_000_000 + 5_000_000))
        assert FaultyOnce.faulted.wait(60.0)
        request_id = runtime.submit(combat_request("npc", random_situation(rng), ACTIONS, 1000.0))
        answers += wait_for(runtime, 1)
    finally:
        runtime.stop()
    assert [d.request_id for d in answers] == [request_id]
    assert answers[0].action in ACTIONS
    assert runtime.stats()["worker_restarts"] == 1
