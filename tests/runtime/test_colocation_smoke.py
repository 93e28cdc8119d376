"""A short co-location run for real: render process and runtime worker on one core."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lego_embed.bench.colocation import (
    ColocationRun,
    ColocationSetting,
    representative_start,
    run_colocation,
    summarize,
)
from lego_embed.bench.fill import GapSpan, gap_spans_ns, overlap_ns
from lego_embed.bench.hitch import Hitch, hitch_metrics
from lego_embed.engines.trace_replay import FrameRecord, PassModel, RenderTrace
from lego_embed.errors import BenchmarkConfigError
from lego_embed.model.loading import LoadedModel
from lego_embed.runtime.runtime import Decision

MS = 1_000_000

ROW_KEYS = {
    "trace", "apm", "policy", "npcs", "frames", "frame_miss_rate", "added_frame_miss_rate",
    "p99_frame_ms", "slo_attainment", "p50_action_ms", "p99_action_ms", "headroom_utilization",
    "mean_skipped_layers", "expected_accuracy",
}


@pytest.mark.parametrize("events", ["forwarded", "direct"])
def test_short_colocation_run(npc_loaded: LoadedModel, tmp_path: Path, events: str) -> None:
    trace = RenderTrace("steady", tmp_path / "steady.csv", "rendertime(ms)", (8.0,) * 90)
    core = max(os.sched_getaffinity(0))
    off = run_colocation(None, ColocationSetting(trace, 300, "off", 0, 1.2), core=core)
    assert len(off.frames) == 72 and not off.timeline
    off_row = summarize(off, None)
    run = run_colocation(npc_loaded, ColocationSetting(trace, 300, "lego", 2, 1.2, events=events),
                         core=core, answer_grace_s=120.0)
    row = summarize(run, off_row["frame_miss_rate"])
    assert set(row) >= ROW_KEYS
    assert row["frames"] == 72
    assert run.requests == 8  # 2 NPCs, one request per 200 ms from 300 ms, deadline inside
    assert row["answered"] == 8 and row["headroom_utilization"] > 0  # none dropped
    # every subtask the worker ran is on the timeline, and the frames were really replayed
    assert run.runtime_stats is not None and len(run.timeline) == run.runtime_stats["subtasks"]
    assert all(f.end_ns > f.begin_ns for f in run.frames)


def test_headroom_accounting_of_a_run() -> None:
    model = PassModel(passes=("a", "b"), pass_weights=(1.0, 1.0), intra_gap_fraction=0.2,
                      gap_weights=(1.0,))
    frames = [  # 10 ns frames: passes of 4 ns and a planned 2 ns gap; vsync every 16 ns
        FrameRecord(0, 10e-6, 0, 10, 16, (("a", 0, 4), ("b", 6, 10))),
        # the LLM delayed pass b by 3 ns: only the planned 2 ns of that gap are headroom
        FrameRecord(1, 10e-6, 16, 29, 32, (("a", 16, 20), ("b", 25, 29))),
        FrameRecord(2, 10e-6, 32, 42, 48, (("a", 32, 36), ("b", 38, 42))),
    ]
    gaps = gap_spans_ns(frames, budget_ns=16, pass_model=model)
    assert gaps == [GapSpan(4, 6, False), GapSpan(10, 16, True), GapSpan(20, 22, False),
                    GapSpan(29, 32, True), GapSpan(36, 38, False)]
    pairs = [(g.start_ns, g.end_ns) for g in gaps]
    assert overlap_ns([(3, 7), (12, 21)], pairs) == 2 + 4 + 1


def test_replay_segment_of_a_trace_barely_longer_than_the_replay() -> None:
    render = tuple([12.0] * 20 + [10.0, 6.0] * 140 + [5.0] * 3)  # 303 frames
    trace = RenderTrace("short", Path("short.csv"), "rendertime", render)
    assert 0 <= representative_start(trace, 300) <= 3  # 300 asked: 4 possible segments
    start = representative_start(trace, 100)
    assert start >= len(render) // 20  # past the first 5% (loading screens)
    segment_mean = sum(render[start : start + 100]) / 100
    assert abs(segment_mean - sum(render) / len(render)) < 0.1


def test_hitch_specs_are_parsed_and_bad_ones_say_how_to_write_them() -> None:
    assert Hitch.parse("745@4") == Hitch(at_s=4.0, ms=745.0)
    assert Hitch.parse("2000@0.5").frame_index == 30
    for bad in ("745", "@4", "x@4", "0@4", "745@-1", "nan@1"):
        with pytest.raises(BenchmarkConfigError, match="MS@S"):
            Hitch.parse(bad)


def test_hitch_metrics_time_the_first_decision_and_the_slo_after_the_hitch() -> None:
    trace = RenderTrace("t", Path("t.csv"), "rendertime", (8.0,) * 10)
    setting = ColocationSetting(trace, 300, "lego", 1, 0.2, hitches=(Hitch(0.05, 500.0),))
    frames = [FrameRecord(0, 8.0, 0, 8 * MS, 17 * MS),
              FrameRecord(1, 8.0, 17 * MS, 25 * MS, 34 * MS),
              FrameRecord(2, 8.0, 34 * MS, 42 * MS, 50 * MS),
              FrameRecord(3, 500.0, 50 * MS, 550 * MS, 67 * MS)]

    def answer(request_id: int, latency_ms: float, met: bool, action: str | None = "block"):
        return Decision(request_id, "npc0", action, latency_ms, 0, 0, 1, 200.0, met,
                        None if action else "RequestOverdueError: late")

    issued = [(1, 40 * MS), (2, 560 * MS), (3, 600 * MS), (4, 700 * MS)]
    decisions = [answer(1, 530.0, False), answer(2, 30.0, True), answer(3, 250.0, False),
                 answer(4, 9000.0, False, None)]
    run = ColocationRun(setting, frames, decisions, 4, [], None, issued)
    (row,) = hitch_metrics(run)
    assert row["frame_index"] == 3 and row["hitch_frame_ms"] == 500.0
    assert row["first_decision_after_hitch_ms"] == 20.0  # request 1, answered at 570 ms
    assert row["requests_after_hitch"] == 3
    assert row["slo_attainment_after_hitch"] == pytest.approx(1 / 3, abs=1e-4)


def test_a_short_hitch_run_answers_every_request_and_reports_it(
    npc_loaded: LoadedModel, tmp_path: Path
) -> None:
    trace = RenderTrace("steady", tmp_path / "steady.csv", "rendertime(ms)", (8.0,) * 120)
    core = max(os.sched_getaffinity(0))
    setting = ColocationSetting(trace, 300, "lego", 1, 1.8, hitches=(Hitch(0.6, 400.0),))
    run = run_colocation(npc_loaded, setting, core=core, answer_grace_s=120.0)
    row = summarize(run, None)
    assert row["answered"] == run.requests == 7  # every request answered, whatever its status
    assert row["worker_restarts"] == 0 and row["runtime"]["errors"] == 0
    (hitch,) = row["hitches"]
    # the long frame was really replayed; how many requests follow it depends on how fast
    # this machine replays, so only the metrics' consistency is checked here
    assert hitch["frame_index"] == 36 and hitch["hitch_frame_ms"] >= 400.0
    assert (hitch["slo_attainment_after_hitch"] is None) == (hitch["requests_after_hitch"] == 0)


def test_short_dialogue_run_streams_lines_and_reports_their_figures(
    npc_loaded: LoadedModel, tmp_path: Path
) -> None:
    trace = RenderTrace("steady", tmp_path / "steady.csv", "rendertime(ms)", (8.0,) * 90)
    core = max(os.sched_getaffinity(0))
    # no fallback, no superseding and no overdue failure: every line is the model's, however
    # late this machine makes it (on a loaded machine the replay slows, gaps fit nothing for
    # seconds, and the first line may not be speaking when the second is asked)
    setting = ColocationSetting(trace, 100, "lego", 1, 1.5, mix="dialogue",
                                runtime_options={"overdue_limit_ms": 120000.0},
                                request_options={"supersede": False})
    run = run_colocation(npc_loaded, setting, core=core, answer_grace_s=120.0)
    row = summarize(run, 0.0)
    assert run.requests == 2 and row["answered"] == 2  # one per 600 ms from 300 ms
    assert row["mix"] == "dialogue" and row["lines"] == 2
    tokens = run.tokens
    assert row["line_tokens"] == sum(d.line_tokens for d in run.decisions) > 0
    assert sum(row["token_skip_levels"].values()) == row["line_tokens"]
    assert {e.request_id for e in tokens} == {d.request_id for d in run.decisions}
    for decision in run.decisions:  # the streamed pieces of each line joined are the line
        assert "".join(e.text for e in tokens if e.request_id == decision.request_id) == (
            decision.line)
    assert 0.0 <= row["pace_attained"] <= 1.0
    assert row["p50_first_token_ms"] <= row["p99_first_token_ms"]


def test_a_bad_decision_cost_is_refused_before_anything_loads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lego_embed.cli import main

    assert main(["bench", "colocation", "--all", "--decision-cost-ms", "0"]) == 2
    assert "--decision-cost-ms must be a positive number of ms" in capsys.readouterr().out


def test_an_unknown_event_delivery_is_refused_before_anything_runs(tmp_path: Path) -> None:
    trace = RenderTrace("steady", tmp_path / "steady.csv", "rendertime(ms)", (8.0,) * 10)
    with pytest.raises(BenchmarkConfigError, match="events 'pipe' is not one of forwarded, direct"):
        run_colocation(None, ColocationSetting(trace, 300, "lego", 1, 0.1, events="pipe"))
