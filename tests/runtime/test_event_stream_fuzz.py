"""Property tests: event streams a real engine can produce never break the runtime.

Streams are built from segments: regular frames (0-4 passes, 30 or 60 FPS), hitches inside a
pass (100 ms to 5 s), stalls between frames, silences (window minimised, debugger paused) in a
gap or inside a pass, passes without pass_end, frames without passes, and bursts of up to 100
requests with deadlines from 1 ms to 2 minutes; then distorted: duplicated events, late
deliveries and timestamps out of order. The runtime runs on a ManualClock, so the timestamps
alone decide what happens. Requests ask for an action, an action and a line, or a line (streamed
token by token), and carry a fallback action in half of the examples (lines take none; NPCs
always supersede their older requests). Invariants: no internal error (the worker stays
healthy), every request is answered exactly once (a decision in the allowed set, a fallback at
its deadline, superseded, or a failure with a reason), streamed tokens come before their
request's answer and joined are its line (also the part of a line a failure cut short), no
subtask starts inside a reported pass for the gap-respecting policies, and stats() holds no NaN
or infinity. Examples that once failed are kept below as @example cases.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from runtime_replay import MS, SECOND, Delivery, identity_bundle, manual_runtime, replay

from lego_embed.model.loading import LoadedModel
from lego_embed.runtime.events import FRAME_BEGIN, FRAME_END, PASS_BEGIN, PASS_END, EngineEvent
from lego_embed.runtime.headroom import MAX_EMPTY_WINDOWS, HeadroomTracker
from lego_embed.runtime.predictor import HeadroomPredictor
from lego_embed.runtime.request import TokenEvent
from lego_embed.skip.bundle import SkipBundle
from lego_embed.tasks.combat.policy import ACTIONS

GAP_RESPECTING = ("lego", "inter_frame", "static_skip")
SEGMENTS = ("frames", "hitch_in_pass", "stall_between_frames", "silence_in_gap",
            "silence_in_pass", "pass_closed_by_frame_end", "pass_never_ends",
            "frames_without_passes", "burst")
deadlines_ms = st.floats(0.0, math.log(120_000.0)).map(math.exp)  # 1 ms .. 2 min


@st.composite
def segments(draw: st.DrawFn) -> tuple:
    kind = draw(st.sampled_from(SEGMENTS))
    if kind in ("frames", "frames_without_passes"):
        return (kind, draw(st.integers(1, 40)), draw(st.integers(0, 4)),
                draw(st.floats(0.05, 1.3)), draw(st.integers(0, 3)))
    if kind in ("hitch_in_pass", "stall_between_frames"):
        return kind, draw(st.integers(100, 5000))
    if kind in ("silence_in_gap", "silence_in_pass"):
        return kind, draw(st.integers(100, 10_000))
    if kind == "burst":
        return kind, tuple(draw(st.lists(deadlines_ms, min_size=1, max_size=100)))
    return (kind,)


@dataclass(frozen=True)
class StreamPlan:
    """A drawn engine session: frame budget (ns), segments, distortion probabilities (events
    duplicated, delivered late, stamped out of order) and the seed of their random choices."""

    budget_ns: int
    segments: tuple[tuple, ...]
    duplicate_p: float = 0.0
    late_p: float = 0.0
    shuffle_p: float = 0.0
    seed: int = 0


def build_stream(plan: StreamPlan) -> list[Delivery]:
    """The plan's deliveries, in arrival order."""
    budget_ns, rng = plan.budget_ns, random.Random(plan.seed)
    items: list[tuple[int, EngineEvent | None, tuple[float, ...]]] = []
    t = SECOND

    def event(kind: str, name: str = "") -> None:
        items.append((t, EngineEvent(kind, name, t), ()))

    def frame(passes: int, render_fraction: float, requests_every: int, index: int) -> None:
        nonlocal t
        begin = t
        event(FRAME_BEGIN)
        busy_ns = round(budget_ns * render_fraction)
        for p in range(passes):
            event(PASS_BEGIN, f"pass{p}")
            t += round(busy_ns * rng.uniform(0.5, 1.5) / passes)
            event(PASS_END, f"pass{p}")
            t += round(rng.uniform(0.0, 0.15) * busy_ns / passes)
        event(FRAME_END)
        if requests_every and index % requests_every == 0:
            items.append((t, None, (rng.choice([50.0, 200.0, 600.0]),)))
        t = max(t, begin + budget_ns)

    for segment in plan.segments:
        kind = segment[0]
        if kind in ("frames", "frames_without_passes"):
            _, count, passes, fraction, requests_every = segment
            for index in range(count):
                frame(0 if kind == "frames_without_passes" else passes, fraction,
                      requests_every, index)
        elif kind in ("hitch_in_pass", "silence_in_pass"):
            event(FRAME_BEGIN)
            event(PASS_BEGIN, "pass0")
            t += segment[1] * MS
            event(PASS_END, "pass0")
            event(FRAME_END)
        elif kind in ("stall_between_frames", "silence_in_gap"):
            t += segment[1] * MS
        elif kind == "pass_closed_by_frame_end":
            event(FRAME_BEGIN)
            event(PASS_BEGIN, "pass0")
            t += budget_ns // 2
            event(FRAME_END)
        elif kind == "pass_never_ends":  # only the next segment's frame_begin closes it
            event(FRAME_BEGIN)
            event(PASS_BEGIN, "pass0")
        else:
            items.append((t, None, segment[1]))
        t += MS
    deliveries, arrival = [], 0
    for t_ns, item, requests in items:
        if item is not None and rng.random() < plan.shuffle_p:
            item = EngineEvent(item.kind, item.name, max(0, t_ns - rng.randrange(0, 20 * MS)))
        delay = rng.randrange(0, 50 * MS) if rng.random() < plan.late_p else 0
        arrival = max(arrival, t_ns + delay)
        deliveries.append(Delivery(arrival, item, requests))
        if item is not None and rng.random() < plan.duplicate_p:
            deliveries.append(Delivery(arrival, item))
    return deliveries


@st.composite
def stream_plans(draw: st.DrawFn) -> StreamPlan:
    probability = st.sampled_from([0.0, 0.05, 0.3])
    return StreamPlan(
        draw(st.sampled_from([round(SECOND / 60), round(SECOND / 30)])),
        tuple(draw(st.lists(segments(), min_size=1, max_size=10))),
        draw(probability), draw(probability), draw(probability),
        draw(st.integers(0, 2**32 - 1)),
    )


@pytest.fixture(scope="module")
def bundle(npc_loaded: LoadedModel) -> SkipBundle:
    return identity_bundle(npc_loaded, [(1, 2), (1, 4), (1, 6)])


OUTPUTS = ("choice", "choice_then_line", "line")
LINE_TOKENS = 6


def request_options(output: str, fallback: bool, tokens: list[TokenEvent]) -> dict:
    """combat_request arguments of every request in a drawn stream."""
    options: dict = {"output": output, "max_tokens": LINE_TOKENS, "on_token": tokens.append}
    if output == "line":
        options["say_for"] = "block"
    elif fallback:
        options["fallback"] = "block"
    return options


def check_invariants(runtime, result, policy: str, tokens: list[TokenEvent] = ()) -> None:
    health = runtime.health()
    assert health.state == "running" and health.restarts == 0, health
    stats = runtime.stats()
    assert stats["errors"] == 0 and stats["duplicate_answers"] == 0, stats
    by_callback = Counter(d.request_id for d in result.callback_answers)
    assert sorted(by_callback) == sorted(result.issued)
    assert set(by_callback.values()) <= {1}
    assert sorted(d.request_id for d in result.polled) == sorted(result.issued)
    streamed: dict[int, list[TokenEvent]] = {}
    for token in tokens:
        streamed.setdefault(token.request_id, []).append(token)
    for decision in result.callback_answers:
        mine = streamed.get(decision.request_id, [])
        assert all(t.latency_ms <= decision.latency_ms for t in mine), decision  # not after it
        if mine or decision.line is not None:
            assert "".join(t.text for t in mine) == decision.line, decision
        if decision.status == "decided":
            if decision.output == "line":
                assert decision.action is None and decision.line is not None, decision
            else:
                assert decision.action in ACTIONS and not decision.error, decision
        elif decision.status == "fallback":
            assert decision.action in ACTIONS and decision.line is None, decision
        elif decision.status == "failed":
            assert decision.action is None and decision.error, decision
        else:  # only a request that delivered nothing yet is superseded
            assert decision.status == "superseded" and decision.action is None, decision
            assert not mine and decision.line is None, decision
        if decision.status == "fallback":  # at the deadline, whatever the engine was doing
            assert decision.deadline_ms - 1e-6 <= decision.latency_ms <= decision.deadline_ms + 5.0
    assert stats["open_requests"] == 0
    json.dumps(stats, allow_nan=False)
    if policy in GAP_RESPECTING:
        assert not result.subtasks_in_open_pass


HITCH_AT_START = StreamPlan(  # 1.2 s hitch first: 6 windows without headroom (rate 0)
    round(SECOND / 60), (("hitch_in_pass", 1200), ("burst", (200.0,)), ("frames", 30, 3, 0.6, 0)),
)
SILENT_IN_PASS = StreamPlan(  # found with the silence rule applied inside passes too
    round(SECOND / 60),
    (("frames", 1, 0, 0.05, 0), ("frames", 1, 0, 0.05, 0), ("frames", 1, 0, 1.2273, 0),
     ("frames", 33, 0, 0.99999, 2), ("hitch_in_pass", 1248), ("pass_never_ends",)),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan=stream_plans(),
       policy=st.sampled_from(("lego", "inter_frame", "static_skip", "free")),
       step_us=st.sampled_from((0, 20, 200)), fallback=st.booleans(),
       output=st.sampled_from(OUTPUTS), borrow=st.booleans())
@example(plan=HITCH_AT_START, policy="lego", step_us=20, fallback=False, output="choice",
         borrow=False)
@example(plan=HITCH_AT_START, policy="lego", step_us=20, fallback=True, output="choice",
         borrow=False)
@example(plan=SILENT_IN_PASS, policy="static_skip", step_us=0, fallback=False, output="choice",
         borrow=False)
@example(plan=SILENT_IN_PASS, policy="lego", step_us=200, fallback=True, output="choice",
         borrow=False)
@example(plan=HITCH_AT_START, policy="lego", step_us=20, fallback=True,
         output="choice_then_line", borrow=False)
@example(plan=SILENT_IN_PASS, policy="lego", step_us=200, fallback=False, output="line",
         borrow=False)
@example(plan=HITCH_AT_START, policy="lego", step_us=20, fallback=True, output="choice",
         borrow=True)
def test_any_engine_stream_keeps_the_runtime_answering(
    npc_loaded: LoadedModel, bundle: SkipBundle, plan: StreamPlan, policy: str, step_us: int,
    fallback: bool, output: str, borrow: bool,
) -> None:
    """step_us: simulated time each clock read of the runtime takes (its work's duration);
    borrow: the runtime option borrow_frame_slack."""
    runtime, clock = manual_runtime(npc_loaded, bundle, step_ns=step_us * 1000, policy=policy,
                                    window_ms=200.0, borrow_frame_slack=borrow)
    tokens: list[TokenEvent] = []
    options = request_options(output, fallback, tokens)
    stream = [replace(d, options=options) if d.deadlines_ms else d for d in build_stream(plan)]
    result = replay(runtime, clock, stream)
    check_invariants(runtime, result, policy, tokens)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.tuples(st.sampled_from((FRAME_BEGIN, PASS_BEGIN, PASS_END, FRAME_END)),
                             st.sampled_from(("a", "b", "")),
                             st.integers(-50 * MS, 20 * SECOND)), max_size=200),
    window_ms=st.sampled_from((1.0, 16.7, 300.0)),
)
def test_tracker_and_predictor_stay_finite_on_any_stream(
    steps: list[tuple[str, str, int]], window_ms: float
) -> None:
    """Arbitrary kinds, names and time steps (backwards too, jumps up to 20 s): windows stay
    few, finite and non-negative, gap estimates finite, predictions finite and >= 0."""
    predictor = HeadroomPredictor()
    tracker = HeadroomTracker(
        window_ms=window_ms, on_window=lambda window: predictor.observe(window.total_ms)
    )
    t = SECOND
    for kind, name, step in steps:
        t = max(0, t + step)
        tracker.on_event(EngineEvent(kind, name, t))
        gap = tracker.open_gap()
        assert gap is None or isinstance(gap.end_estimate_ns, int)
        assert gap is None or (isinstance(gap.slack_ns, int)
                               and 0 <= gap.slack_ns <= tracker.frame_budget_ns)
        predicted = predictor.predict()
        assert predicted is None or (math.isfinite(predicted) and predicted >= 0)
    for window in tracker.windows:
        assert math.isfinite(window.total_ms) and window.total_ms >= 0
    # bounded work per event: a jump closes the open window and at most 3 empty ones; a gap
    # spans at most one frame budget (inter-frame) or one window (intra-frame)
    per_event = MAX_EMPTY_WINDOWS + 3 + math.ceil(tracker.frame_budget_ns / tracker.window_ns)
    assert len(tracker.windows) <= len(steps) * per_event
    assert all(math.isfinite(e.mean_ms) for e in tracker.slots.values())
    frames = tracker.frame_length  # a frame counts as at most two frame budgets, never negative
    assert frames is None or 0 <= frames.mean_ms <= 2 * tracker.frame_budget_ns / 1e6
