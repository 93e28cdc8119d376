"""Trace loader: the real shared traces and the quirks written to tmp files."""

from __future__ import annotations

from pathlib import Path

import pytest

from lego_embed.engines.trace_replay import (
    PassModel,
    all_shared_traces,
    load_trace,
    load_traces,
    simulate_frames,
)
from lego_embed.errors import TraceFormatError

PER_FRAME = (
    "realtime,framenum,rendertime(ms),GPUUtil(%)\r\n"
    "0.10,6,16.5,99\r\n"
    "0.12,6,0.0005,99\r\n"
    "0.14,7,14.25,99\r\n"
    "0.16,8,12.0,99\r\n"
    "0.18,9,10.25"
)


def test_every_shared_trace_loads(shared_dir: Path) -> None:
    traces = all_shared_traces(shared_dir / "traces")
    names = {t.name for t in traces}
    assert {"blackmyth_render_1", "ffxvi_render_1", "rdr2_render_2"} <= names
    assert sum(name.startswith("three_games_frametimes:") for name in names) == 3
    for trace in traces:
        assert trace.frames > 500
        assert all(r >= 0 for r in trace.render_ms)
    blackmyth = next(t for t in traces if t.name == "blackmyth_render_1")
    # the file has repeated frame numbers with near-zero rows and a cut-short last row
    assert blackmyth.dropped_rows > 0
    assert min(blackmyth.render_ms) > 1.0


def test_duplicates_and_truncated_last_row(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv"
    path.write_text(PER_FRAME)
    (trace,) = load_traces(path)
    assert trace.render_ms == (16.5, 14.25, 12.0)  # near-zero duplicate and cut row dropped
    assert trace.dropped_rows == 2


def test_header_shuffled_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "shuffled.csv"
    path.write_bytes(
        "\ufeffGPUUtil(%),fps,RenderTime(ms),realtime,FrameNum\n"
        "99,60,9.5,0.1,1\n99,60,11.0,0.2,2\n99,60,7.25,0.3,3\n".encode()
    )
    (trace,) = load_traces(path)
    assert trace.render_ms == (9.5, 11.0, 7.25)


def test_multi_game_table_one_trace_per_game(tmp_path: Path) -> None:
    path = tmp_path / "games.csv"
    path.write_text("\ufeffGame A,Game B,frametime1\n8.0,7.0,16.67\n9.0,6.5,16.67\n8.5,7.5,\n")
    traces = load_traces(path)
    assert [t.column for t in traces] == ["game a", "game b"]
    assert traces[1].render_ms == (7.0, 6.5, 7.5)
    assert load_trace(f"{path}:Game B").render_ms == traces[1].render_ms


@pytest.mark.parametrize(
    "content",
    ["", "realtime,framenum,GPUUtil(%)\n0.1,1,99\n", "realtime,framenum,rendertime(ms)\n0.1,1,x\n"],
)
def test_unusable_files_raise_trace_format_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(TraceFormatError):
        load_traces(path)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="does not exist"):
        load_traces(tmp_path / "nope.csv")


def test_pass_model_splits_render_time_into_passes_and_gaps() -> None:
    model = PassModel()
    passes, gaps = model.split(10.0)
    assert len(passes) == 4 and len(gaps) == 3
    assert sum(passes) + sum(gaps) == pytest.approx(10.0)
    assert sum(gaps) == pytest.approx(1.5)
    with pytest.raises(TraceFormatError):
        PassModel(passes=("a", "b"), pass_weights=(1.0,), gap_weights=(1.0,))


def test_simulated_frames_follow_vsync_and_miss_long_frames() -> None:
    budget_ms = 1000 / 60
    frames = list(simulate_frames([10.0, 20.0, 5.0], frame_budget_ms=budget_ms))
    records = [record for record, _ in frames]
    assert [r.missed for r in records] == [False, True, False]
    assert records[0].begin_ns == 0
    # the long frame ends after its vsync, so the next frame waits for the tick after that
    assert records[2].begin_ns == 3 * round(budget_ms * 1e6)
    kinds = [event.kind for event in frames[0][1]]
    assert kinds[0] == "frame_begin" and kinds[-1] == "frame_end"
    assert kinds.count("pass_begin") == 4
