"""A short co-location run for real: render process and runtime worker on one core."""

from __future__ import annotations

import os
from pathlib import Path

from lego_embed.engines.colocation_bench import (
    ColocationSetting,
    _gaps_ns,
    _overlap_ns,
    run_colocation,
    summarize,
)
from lego_embed.engines.trace_replay import FrameRecord, RenderTrace
from lego_embed.model.loading import LoadedModel

ROW_KEYS = {
    "trace", "apm", "policy", "npcs", "frames", "frame_miss_rate", "added_frame_miss_rate",
    "p99_frame_ms", "slo_attainment", "p50_action_ms", "p99_action_ms", "headroom_utilization",
    "mean_skipped_layers", "expected_accuracy",
}


def test_short_colocation_run(npc_loaded: LoadedModel, tmp_path: Path) -> None:
    trace = RenderTrace("steady", tmp_path / "steady.csv", "rendertime(ms)", (8.0,) * 90)
    core = max(os.sched_getaffinity(0))
    off = run_colocation(None, ColocationSetting(trace, 300, "off", 0, 1.2), core=core)
    assert len(off.frames) == 72 and not off.timeline
    off_row = summarize(off, None)
    run = run_colocation(npc_loaded, ColocationSetting(trace, 300, "lego", 2, 1.2), core=core,
                         answer_grace_s=120.0)
    row = summarize(run, off_row["frame_miss_rate"])
    assert set(row) >= ROW_KEYS
    assert row["frames"] == 72
    assert run.requests == 8  # 2 NPCs, one request per 200 ms from 300 ms, deadline inside
    assert row["answered"] == 8 and row["headroom_utilization"] > 0  # none dropped
    # every subtask the worker ran is on the timeline, and the frames were really replayed
    assert run.runtime_stats is not None and len(run.timeline) == run.runtime_stats["subtasks"]
    assert all(f.end_ns > f.begin_ns for f in run.frames)


def test_headroom_accounting_of_a_run() -> None:
    frames = [
        FrameRecord(0, 8.0, 0, 10, 16, (("a", 0, 4), ("b", 6, 10))),
        FrameRecord(1, 8.0, 16, 26, 32, (("a", 16, 20), ("b", 22, 26))),
    ]
    gaps = _gaps_ns(frames, budget_ns=16)
    assert gaps == [(4, 6), (10, 16), (20, 22)]
    assert _overlap_ns([(3, 7), (12, 21)], gaps) == 2 + 4 + 1
