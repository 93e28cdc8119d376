"""Headroom tracker (gaps, slots, windows) and the online least-squares predictor."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from lego_embed.bench.predictor import (
    benchmark_trace,
    hindsight_linear_pct,
    predictor_error,
)
from lego_embed.engines.trace_replay import all_shared_traces, simulate_frames
from lego_embed.errors import InvalidEngineEventError
from lego_embed.runtime.events import EngineEvent
from lego_embed.runtime.headroom import INTER_FRAME_SLOT, MIN_SLACK_FRAMES, HeadroomTracker
from lego_embed.runtime.predictor import (
    HeadroomPredictor,
    LastValuePredictor,
    MovingAveragePredictor,
)

MS = 1_000_000


def frame(t0_ms: float, passes: list[tuple[str, float, float]], end_ms: float) -> list[EngineEvent]:
    events = [EngineEvent("frame_begin", "", round(t0_ms * MS))]
    for name, begin_ms, finish_ms in passes:
        events.append(EngineEvent("pass_begin", name, round(begin_ms * MS)))
        events.append(EngineEvent("pass_end", name, round(finish_ms * MS)))
    events.append(EngineEvent("frame_end", "", round(end_ms * MS)))
    return events


def test_bad_event_kind_is_a_typed_error() -> None:
    with pytest.raises(InvalidEngineEventError):
        EngineEvent("vsync", "", 0)
    with pytest.raises(InvalidEngineEventError):
        EngineEvent("frame_begin", "", 1.5)  # type: ignore[arg-type]


def test_intra_and_inter_frame_gaps_per_window() -> None:
    tracker = HeadroomTracker(frame_budget_ms=20.0, window_ms=40.0)
    # frame 0: passes 0-4, 5-9 (1 ms intra gap), end at 9 -> 11 ms inter gap to 20
    for event in frame(0, [("a", 0, 4), ("b", 5, 9)], 9):
        tracker.on_event(event)
    # frame 1: passes 20-23, 25-30 (2 ms gap); then a long pause: inter gap capped at 20 ms
    for event in frame(20, [("a", 20, 23), ("b", 25, 30)], 30):
        tracker.on_event(event)
    tracker.on_event(EngineEvent("frame_begin", "", 200 * MS))
    first = tracker.windows[0]
    assert first.intra_ms == pytest.approx(3.0)
    # inter: 11 ms (9..20) + the part of the capped gap (from 180 ms) in window 0: none
    assert first.inter_ms == pytest.approx(11.0)
    totals = [w.total_ms for w in tracker.windows]
    assert sum(totals) == pytest.approx(3.0 + 11.0 + 20.0)
    assert tracker.slots["after:a"].mean_ms == pytest.approx(1.0 + 0.1 * (2.0 - 1.0))
    assert tracker.slots[INTER_FRAME_SLOT].count == 2


def test_open_gap_estimates_the_next_vsync_and_slot_length() -> None:
    tracker = HeadroomTracker(frame_budget_ms=16.0, window_ms=100.0)
    for event in frame(0, [("a", 0, 4), ("b", 6, 10)], 10):
        tracker.on_event(event)
    gap = tracker.open_gap()
    assert gap is not None and gap.inter_frame
    assert gap.end_estimate_ns == 16 * MS
    tracker.on_event(EngineEvent("frame_begin", "", 16 * MS))
    tracker.on_event(EngineEvent("pass_begin", "a", 16 * MS))
    assert tracker.open_gap() is None
    tracker.on_event(EngineEvent("pass_end", "a", 20 * MS))
    gap = tracker.open_gap()
    assert gap is not None and gap.slot == "after:a"
    assert gap.end_estimate_ns == 22 * MS  # one 2 ms sample so far, no deviation yet


def test_an_inter_frame_gap_carries_the_next_frames_slack_once_frames_were_measured() -> None:
    tracker = HeadroomTracker(frame_budget_ms=16.0, window_ms=100.0, gap_deviations=2.0)
    renders_ms = [10.0, 12.0] * MIN_SLACK_FRAMES  # frame_begin to frame_end
    for index, render_ms in enumerate(renders_ms):
        t0 = 16.0 * index
        for event in frame(t0, [("a", t0, t0 + render_ms)], t0 + render_ms):
            tracker.on_event(event)
        tracker.on_event(EngineEvent("frame_end", "", round((t0 + render_ms) * MS)))  # repeated
        gap = tracker.open_gap()
        assert gap is not None and gap.inter_frame
        # nothing before MIN_SLACK_FRAMES frames, something from then on
        assert (gap.slack_ns > 0) == (index + 1 >= MIN_SLACK_FRAMES)
    estimate = tracker.frame_length
    assert estimate is not None and estimate.count == len(renders_ms)  # repeats not counted
    # frames of 10 and 12 ms: mean about 11 ms, deviation about 1 ms, long estimate about 13 ms
    assert estimate.mean_ms == pytest.approx(11.0, abs=0.2)
    assert estimate.deviation_ms == pytest.approx(1.0, abs=0.1)
    assert gap.slack_ns == pytest.approx(3.0 * MS, abs=0.5 * MS)
    t0 = 16.0 * len(renders_ms)  # inside the next frame: intra-frame gaps carry no slack
    tracker.on_event(EngineEvent("frame_begin", "", round(t0 * MS)))
    intra = tracker.open_gap()
    assert intra is not None and not intra.inter_frame and intra.slack_ns == 0
    for index in range(30):  # frames that fill the budget leave no slack
        t0 = 16.0 * (len(renders_ms) + index)
        for event in frame(t0, [("a", t0, t0 + 16.0)], t0 + 16.0):
            tracker.on_event(event)
    assert tracker.next_frame_slack_ns() == 0


def test_window_totals_match_the_simulated_trace() -> None:
    render_ms = [10.0] * 120
    tracker = HeadroomTracker(window_ms=1000.0)
    for _, events in simulate_frames(render_ms):
        for event in events:
            tracker.on_event(event)
    # 60 frames per second, each leaves 16.67 - 8.5 ms idle (10 ms minus 15% intra gaps busy)
    assert tracker.windows[0].total_ms == pytest.approx(60 * (1000 / 60 - 8.5), rel=1e-3)


def test_regression_learns_a_periodic_pattern_baselines_cannot() -> None:
    pattern = [100.0, 140.0, 120.0]
    series = [pattern[i % 3] for i in range(300)]
    regression = predictor_error(HeadroomPredictor(), series)
    last = predictor_error(LastValuePredictor(), series)
    average = predictor_error(MovingAveragePredictor(), series)
    assert regression.mean_abs_pct_error < 2.0
    assert last.mean_abs_pct_error > 10.0
    assert average.mean_abs_pct_error > 10.0


def test_regression_tracks_a_level_change_without_calibration() -> None:
    rng = random.Random(0)
    series = [100 + rng.gauss(0, 1) for _ in range(100)]
    series += [60 + rng.gauss(0, 1) for _ in range(100)]
    predictor = HeadroomPredictor()
    for value in series:
        predictor.observe(value)
    predicted = predictor.predict()
    assert predicted is not None and abs(predicted - 60) < 3


def test_predictor_before_three_windows() -> None:
    predictor = HeadroomPredictor()
    assert predictor.predict() is None
    predictor.observe(10.0)
    predictor.observe(20.0)
    assert predictor.predict() == pytest.approx(15.0)


def test_benchmark_row_on_a_real_trace(shared_dir: Path) -> None:
    trace = next(t for t in all_shared_traces(shared_dir / "traces") if "final fantasy" in t.name)
    row = benchmark_trace(trace, 300.0)
    assert row["windows"] > 20
    for key in ("mean_abs_pct_error", "max_abs_pct_error"):
        assert math.isfinite(row[key])
    assert set(row["baselines"]) == {"last_value", "moving_average_3"}
    assert 0 < row["hindsight_linear_abs_pct_error"] <= row["mean_abs_pct_error"] * 1.5


def test_hindsight_linear_fit_is_exact_on_a_linear_recurrence() -> None:
    rng = random.Random(3)
    series = [100 + rng.uniform(-20, 20) for _ in range(3)]
    for _ in range(60):
        series.append(0.5 * series[-1] + 0.3 * series[-2] + 0.1 * series[-3] + 12.0)
    assert hindsight_linear_pct(series) < 1e-6
    noisy = [value + rng.gauss(0, 5) for value in series]
    assert hindsight_linear_pct(noisy) > 1.0
