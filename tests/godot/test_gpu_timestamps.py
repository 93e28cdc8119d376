"""GPU timestamps read back from Godot 4 onto the runtime's clock, without Godot: clock mapping,
passes, ordering, and what the Runtime does with GPU-measured events."""

from __future__ import annotations

import json

import pytest

from lego_embed.engines.gpu_timestamps import (
    GpuTimeline,
    GpuTimestampFrame,
    frame_passes,
)
from lego_embed.errors import EngineBridgeError
from lego_embed.runtime.events import (
    FRAME_BEGIN,
    FRAME_END,
    PASS_BEGIN,
    PASS_END,
    EngineEvent,
    measured_on_gpu,
)
from lego_embed.runtime.headroom import HeadroomTracker

PASS_NAMES = ("Frame Begin", "> Render Viewports", "vp_begin_7", "Render Opaque Pass", "Tonemap",
              "vp_end_7", "< Render Viewports")


def make_frame(
    frame: int, gpu_start_ns: int, gpu_offset_ns: int, tick_offset_ns: int,
    latency_ns: int = 2_000_000, names: tuple[str, ...] = PASS_NAMES, step_ns: int = 1_000_000,
) -> GpuTimestampFrame:
    """A read-back frame whose GPU clock is CLOCK_MONOTONIC - gpu_offset_ns and whose ticks are
    CLOCK_MONOTONIC - tick_offset_ns; each timestamp is recorded latency_ns before it runs."""
    gpu_ns = tuple(gpu_start_ns + i * step_ns for i in range(len(names)))
    mono = [g + gpu_offset_ns for g in gpu_ns]
    cpu_us = tuple((m - latency_ns - tick_offset_ns) // 1000 for m in mono)
    read_ns = mono[-1] + 40_000_000
    return GpuTimestampFrame(frame, frame + 2, names, gpu_ns, cpu_us,
                             (read_ns - tick_offset_ns) // 1000, read_ns)


def test_json_from_the_bridge_is_parsed_and_checked() -> None:
    text = json.dumps({"frame": 5, "drawn": 7, "names": ["vp_begin_1", "vp_end_1"],
                       "gpu_ns": [10, 20], "cpu_us": [1, 2], "ticks_us": 3, "t_ns": 4000})
    frame = GpuTimestampFrame.from_json(text)
    assert (frame.frame, frame.drawn, frame.names, frame.gpu_ns) == (5, 7, ("vp_begin_1",
                                                                           "vp_end_1"), (10, 20))
    with pytest.raises(EngineBridgeError, match="must match"):
        GpuTimestampFrame.from_json(text.replace("[1, 2]", "[1]"))
    with pytest.raises(EngineBridgeError, match="unreadable"):
        GpuTimestampFrame.from_json('{"frame": 1}')


def test_the_mapping_recovers_the_gpu_clock_offset_within_the_shortest_latency() -> None:
    timeline = GpuTimeline()
    gpu_offset, tick_offset = 5_000_000_000, 123_456_789_000
    for i, latency in enumerate([3_000_000, 800_000, 5_000_000, 2_000_000]):
        frame = make_frame(i, 1_000_000_000 + i * 33_000_000, gpu_offset, tick_offset, latency)
        mapped = timeline.map_frame(frame)
        # never later than the truth, and off by at most the shortest latency seen so far (+1 us
        # of tick rounding)
        truth = [g + gpu_offset for g in frame.gpu_ns]
        shortest = min([3_000_000, 800_000, 5_000_000, 2_000_000][: i + 1])
        for m, t in zip(mapped, truth, strict=True):
            assert t - shortest - 1000 <= m <= t + 1000
    assert timeline.gpu_offset_ns == pytest.approx(gpu_offset - 800_000, abs=1000)


def test_passes_tile_the_frame_and_markers_split_nothing() -> None:
    times = [100, 110, 120, 130, 400, 900, 910]
    passes = frame_passes(PASS_NAMES, times)
    assert [(p.name, p.begin_ns, p.end_ns) for p in passes] == [
        ("Frame Begin", 100, 130), ("Render Opaque Pass", 130, 400), ("Tonemap", 400, 910),
    ]


def test_without_per_pass_captures_the_viewport_is_one_pass() -> None:
    passes = frame_passes(("vp_begin_3", "vp_end_3"), [1000, 9000])
    assert [(p.name, p.begin_ns, p.end_ns) for p in passes] == [("viewport", 1000, 9000)]
    assert frame_passes(("vp_begin_3",), [1000]) == []


def test_frames_become_ordered_gpu_events_with_their_delay() -> None:
    timeline = GpuTimeline()
    events = []
    for i in range(3):
        events += timeline.events(make_frame(i, 10**9 + i * 33_000_000, 0, 0))
    assert all(measured_on_gpu(e) for e in events)
    assert [e.kind for e in events[:4]] == [FRAME_BEGIN, PASS_BEGIN, PASS_END, PASS_BEGIN]
    assert events[1].name == "gpu:Frame Begin"
    assert all(a.t_ns <= b.t_ns for a, b in zip(events, events[1:], strict=False))
    stats = timeline.stats()
    assert stats["frames"] == 3 and stats["delay_frames_min"] == stats["delay_frames_max"] == 2
    assert stats["delay_ms_p50"] == pytest.approx(40.0, abs=2.1)  # read 40 ms after the end
    assert stats["passes"] == ["Frame Begin", "Render Opaque Pass", "Tonemap"]
    assert stats["tail_ms_p50"] == pytest.approx(0.0, abs=0.002)  # as fast as ever seen
    # each frame's busy span (first to last timestamp: 6 steps of 1 ms), by its read-back draw
    assert stats["last_busy_ms"] == [[2, 6.0], [3, 6.0], [4, 6.0]]


def test_the_gpu_tail_is_how_much_later_than_the_fastest_latency_a_frame_finished() -> None:
    timeline = GpuTimeline()
    for i, latency_ms in enumerate([1, 1, 1, 9, 9]):  # the GPU falls 8 ms further behind
        timeline.events(make_frame(i, 10**9 + i * 33_000_000, 0, 0, latency_ns=latency_ms * 10**6))
    assert timeline.stats()["tail_ms_p50"] == pytest.approx(0.0, abs=0.002)
    timeline.events(make_frame(5, 10**9 + 5 * 33_000_000, 0, 0, latency_ns=9 * 10**6))
    assert timeline.stats()["tail_ms_p50"] == pytest.approx(8.0, abs=0.002)


def test_a_frame_that_maps_before_the_last_one_is_shifted_after_it() -> None:
    timeline = GpuTimeline()
    first = timeline.events(make_frame(0, 100_000_000, 0, 0, latency_ns=5_000_000))
    # a much shorter latency raises the offset estimate: the next frame maps later, never earlier
    second = timeline.events(make_frame(1, 101_000_000, 0, 0, latency_ns=100_000))
    assert second[0].t_ns >= first[-1].t_ns


def test_gpu_events_feed_their_own_tracker_in_the_runtime_order() -> None:
    """The GPU tracker sees idle time between GPU frames as inter-frame headroom."""
    tracker = HeadroomTracker(frame_budget_ms=33.3, window_ms=100.0)
    timeline = GpuTimeline()
    for i in range(10):
        for event in timeline.events(make_frame(i, 10**9 + i * 33_000_000, 0, 0)):
            tracker.on_event(event)
    # each frame: 6 ms of passes, then 27 ms until the next frame; three frames per 100 ms window
    assert tracker.slots["inter_frame"].mean_ms == pytest.approx(27.0, abs=0.01)
    assert tracker.frames == 10
    assert [w.inter_ms for w in tracker.windows] == pytest.approx([81.0, 81.0, 81.0], abs=0.01)
    assert all(w.intra_ms == 0.0 for w in tracker.windows)  # passes tile the frame


def test_cpu_events_are_not_gpu_events() -> None:
    assert not measured_on_gpu(EngineEvent(PASS_END, "render", 5))
    assert not measured_on_gpu(EngineEvent(FRAME_END, "", 5))
    assert measured_on_gpu(EngineEvent(FRAME_END, "gpu", 5))
