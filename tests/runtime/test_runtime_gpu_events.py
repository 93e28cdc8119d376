"""GPU-measured events (Godot 4's timestamps, late by a frame or more) in the Runtime: they feed
their own headroom tracker and never the live one that gates dispatch."""

from __future__ import annotations

import time

import pytest

from lego_embed.model.loading import LoadedModel
from lego_embed.runtime.events import (
    FRAME_BEGIN,
    FRAME_END,
    GPU_EVENT_NAME,
    PASS_BEGIN,
    PASS_END,
    EngineEvent,
)
from lego_embed.runtime.runtime import Runtime, RuntimeConfig


def test_gpu_events_feed_the_gpu_tracker_only(npc_loaded: LoadedModel) -> None:
    runtime = Runtime(npc_loaded, config=RuntimeConfig(warmup=False, frame_budget_ms=20.0,
                                                       window_ms=100.0))
    runtime.start(thread=False)  # this thread drains the events: no waiting for a worker
    try:
        now = time.monotonic_ns()
        for i in range(3):  # live CPU frames
            t = now + i * 20_000_000
            runtime.on_event(EngineEvent(FRAME_BEGIN, "", t))
            runtime.on_event(EngineEvent(PASS_BEGIN, "render", t + 1_000_000))
            runtime.on_event(EngineEvent(PASS_END, "render", t + 5_000_000))
            runtime.on_event(EngineEvent(FRAME_END, "", t + 6_000_000))
        last_cpu_ns = runtime._last_event_ns
        start = now - 500_000_000  # GPU frames measured half a second ago: 12 ms busy, 8 ms idle
        for i in range(20):
            t = start + i * 20_000_000
            runtime.on_event(EngineEvent(FRAME_BEGIN, GPU_EVENT_NAME, t))
            runtime.on_event(EngineEvent(PASS_BEGIN, "gpu:Render Opaque Pass", t))
            runtime.on_event(EngineEvent(PASS_END, "gpu:Render Opaque Pass", t + 12_000_000))
            runtime.on_event(EngineEvent(FRAME_END, GPU_EVENT_NAME, t + 12_000_000))
        assert runtime._last_event_ns == last_cpu_ns  # late GPU events are no sign of life
        runtime.run_until_idle()
    finally:
        runtime.stop()
    stats = runtime.stats()
    assert stats["frames_seen"] == 3 and stats["gpu_frames_seen"] == 20
    assert "after:gpu:Render Opaque Pass" not in stats["slot_estimates_ms"]
    assert stats["gpu_slot_estimates_ms"]["inter_frame"] == pytest.approx(8.0)
    assert stats["gpu_window_headroom_ms"][0] == pytest.approx(40.0)
