"""GPU pass boundaries from Godot 4's RenderingDevice timestamps, on the runtime's clock.

Godot 4's RenderingDevice (Vulkan, Direct3D 12, Metal drivers) writes GPU timestamp queries into
a frame's command stream wherever the renderer calls ``capture_timestamp(name)`` and reads them
back when that frame's slot is reused: at the end of the draw ``get_frame_delay() - 1`` frames
later (one frame with the default two frames in flight; measured: 17-20 ms at 60 FPS). For
each read-back frame GDScript can see, per timestamp, its name, the GPU time (ns, the GPU's own
clock) and the CPU time at which it was recorded (``Time.get_ticks_usec()`` units, the engine's
tick clock). What gets captured:

- ``vp_begin_<id>`` / ``vp_end_<id>`` around each viewport whose render time is measured
  (``RenderingServer.viewport_set_measure_render_time``): the viewport's GPU begin and end;
- every render pass (``Render Opaque Pass``, ``Tonemap``, ...; ``>``/``<`` mark groups) only
  while the renderer captures frame timestamps, which Godot turns on for its visual profiler
  (editor debugger) or for ``--gpu-profile`` / the project setting
  ``debug/settings/stdout/print_gpu_profile`` (which also prints a GPU profile every second).

This module maps those timestamps onto CLOCK_MONOTONIC (the runtime's clock) and turns each
frame into engine events: ``frame_begin``/``frame_end`` named ``gpu`` around the frame's first
and last timestamp, and ``pass_begin``/``pass_end`` named ``gpu:<pass>``. Passes tile the frame:
consecutive timestamps are written back to back in the command stream, so GPU idle time inside
a frame cannot be told from work, and work after the last timestamp (the blit to the window,
presentation) is not covered. GPU idle time between frames is what the timestamps measure.

Clock mapping. Ticks to CLOCK_MONOTONIC: each read-back carries the tick count and the
CLOCK_MONOTONIC time the bridge stamped right after it; the smallest difference over the last
frames is the offset (the stamp can only come later). GPU clock to CLOCK_MONOTONIC: a command
runs on the GPU after the CPU recorded it, so ``offset >= cpu_i - gpu_i`` for every timestamp;
the largest bound over the last frames is the offset, i.e. each GPU time is mapped to the
earliest moment consistent with causality. Its error is the shortest record-to-execute latency
in the window (small when the GPU was idle at a submission).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

from lego_embed.errors import EngineBridgeError
from lego_embed.runtime.events import (
    FRAME_BEGIN,
    FRAME_END,
    GPU_EVENT_NAME,
    GPU_PASS_PREFIX,
    PASS_BEGIN,
    PASS_END,
    EngineEvent,
)

CLOCK_WINDOW_FRAMES = 120
STATS_FRAMES = 3600
LAST_FRAMES = 64
VIEWPORT_BEGIN = "vp_begin_"
VIEWPORT_END = "vp_end_"
VIEWPORT_PASS = "viewport"
GROUP_MARKS = (">", "<")


@dataclass(frozen=True)
class GpuTimestampFrame:
    """The timestamps Godot read back for one frame.

    frame: the engine frame they belong to (Engine.get_frames_drawn() during its draw);
    drawn: Engine.get_frames_drawn() during the draw that read them back; names, gpu_ns (GPU
    clock, ns) and cpu_us (engine ticks, us, when the CPU recorded each one), one entry per
    timestamp in recording order; ticks_us and read_ns: the engine's tick count and
    CLOCK_MONOTONIC (ns) at the read.
    """

    frame: int
    drawn: int
    names: tuple[str, ...]
    gpu_ns: tuple[int, ...]
    cpu_us: tuple[int, ...]
    ticks_us: int
    read_ns: int

    @classmethod
    def from_json(cls, text: str) -> GpuTimestampFrame:
        """Parses the JSON object the Godot 4 bridge queues for each read-back frame."""
        try:
            data = json.loads(text)
            names = tuple(str(name) for name in data["names"])
            gpu_ns = tuple(int(value) for value in data["gpu_ns"])
            cpu_us = tuple(int(value) for value in data["cpu_us"])
            result = cls(int(data["frame"]), int(data["drawn"]), names, gpu_ns, cpu_us,
                         int(data["ticks_us"]), int(data["t_ns"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineBridgeError(
                f"unreadable GPU timestamp frame {text[:200]!r}: {exc}"
            ) from exc
        if not len(names) == len(gpu_ns) == len(cpu_us):
            raise EngineBridgeError(
                f"GPU timestamp frame {result.frame}: {len(names)} names, {len(gpu_ns)} GPU times"
                f" and {len(cpu_us)} CPU times; they must match"
            )
        return result


@dataclass(frozen=True)
class GpuPass:
    """One GPU pass of a frame on the runtime's clock: name, begin and end (CLOCK_MONOTONIC ns)."""

    name: str
    begin_ns: int
    end_ns: int


def frame_passes(names: tuple[str, ...], times_ns: list[int]) -> list[GpuPass]:
    """The passes of one frame from its timestamps (already on the runtime's clock).

    With per-pass captures, each pass runs from its timestamp to the next pass's (group marks
    and viewport markers only split nothing: their time belongs to the pass before them).
    With only the viewport markers, one pass ``viewport`` from the first begin to the last end.
    """
    starts = [
        i for i, name in enumerate(names)
        if not name.startswith(GROUP_MARKS + (VIEWPORT_BEGIN, VIEWPORT_END))
    ]
    if starts:
        ends = [*starts[1:], len(names) - 1]
        return [
            GpuPass(names[i], times_ns[i], times_ns[end])
            for i, end in zip(starts, ends, strict=True) if times_ns[end] > times_ns[i]
        ]
    begins = [t for name, t in zip(names, times_ns, strict=True) if name.startswith(VIEWPORT_BEGIN)]
    ends = [t for name, t in zip(names, times_ns, strict=True) if name.startswith(VIEWPORT_END)]
    if begins and ends and max(ends) > min(begins):
        return [GpuPass(VIEWPORT_PASS, min(begins), max(ends))]
    return []


class GpuTimeline:
    """Maps read-back GPU timestamp frames onto CLOCK_MONOTONIC and turns them into engine events.

    ``events(frame)`` returns the frame's events in time order (never earlier than the events
    it returned before); ``stats()`` reports the clock offsets and how late frames arrived.
    Not thread-safe: feed it from one thread (the bridge's pump).
    """

    def __init__(self, window_frames: int = CLOCK_WINDOW_FRAMES) -> None:
        self._tick_offsets: deque[int] = deque(maxlen=window_frames)
        self._gpu_bounds: deque[int] = deque(maxlen=window_frames)
        self._last_ns: int | None = None
        self.frames = 0
        self.empty_frames = 0
        self.pass_names: set[str] = set()
        self.gpu_offset_ns: int | None = None
        self._tick_offset_ns = 0
        # per recent frame: engine frames drawn at its read-back, delay in frames, delay in ms,
        # GPU busy span in ms, GPU tail in ms
        self._recent: deque[tuple[int, int, float, float, float]] = deque(maxlen=STATS_FRAMES)

    def map_frame(self, frame: GpuTimestampFrame) -> list[int]:
        """The frame's GPU times on CLOCK_MONOTONIC (ns), updating both clock offsets."""
        self._tick_offsets.append(frame.read_ns - frame.ticks_us * 1000)
        self._tick_offset_ns = tick_offset_ns = min(self._tick_offsets)
        self._gpu_bounds.append(max(
            cpu_us * 1000 + tick_offset_ns - gpu_ns
            for cpu_us, gpu_ns in zip(frame.cpu_us, frame.gpu_ns, strict=True)
        ))
        self.gpu_offset_ns = max(self._gpu_bounds)
        return [gpu_ns + self.gpu_offset_ns for gpu_ns in frame.gpu_ns]

    def events(self, frame: GpuTimestampFrame) -> list[EngineEvent]:
        """The frame as engine events on the runtime's clock (none for a frame without passes)."""
        if not frame.names:
            self.empty_frames += 1
            return []
        times_ns = self.map_frame(frame)
        passes = frame_passes(frame.names, times_ns)
        if not passes:
            self.empty_frames += 1
            return []
        # keep the timeline monotonic when a better offset estimate moved this frame earlier
        shift = 0 if self._last_ns is None else max(0, self._last_ns - passes[0].begin_ns)
        events = [EngineEvent(FRAME_BEGIN, GPU_EVENT_NAME, passes[0].begin_ns + shift)]
        for gpu_pass in passes:
            name = GPU_PASS_PREFIX + gpu_pass.name
            events.append(EngineEvent(PASS_BEGIN, name, gpu_pass.begin_ns + shift))
            events.append(EngineEvent(PASS_END, name, gpu_pass.end_ns + shift))
            self.pass_names.add(gpu_pass.name)
        events.append(EngineEvent(FRAME_END, GPU_EVENT_NAME, passes[-1].end_ns + shift))
        self._last_ns = events[-1].t_ns
        self.frames += 1
        recorded_last_ns = frame.cpu_us[-1] * 1000 + self._tick_offset_ns
        self._recent.append((
            frame.drawn, frame.drawn - frame.frame, (frame.read_ns - passes[-1].end_ns) / 1e6,
            (passes[-1].end_ns - passes[0].begin_ns) / 1e6,
            (passes[-1].end_ns - recorded_last_ns) / 1e6,
        ))
        return events

    def stats(self) -> dict[str, object]:
        """Frames mapped, pass names seen, the GPU clock's offset from CLOCK_MONOTONIC (ns), and
        over the last STATS_FRAMES frames: the delay with which frames arrived, in frames
        (engine frames drawn between the frame and its read-back) and in ms (read-back minus
        the frame's mapped GPU end), the GPU busy span of a frame (first to last timestamp), and
        the GPU tail: how long after the CPU recorded a frame's last command the GPU finished it
        (longer than a frame: the GPU runs behind, i.e. it is the bottleneck); and per frame of
        the last LAST_FRAMES, [engine frames drawn when it was read back, GPU busy span in ms]
        (to hold against the engine's own per-frame reading)."""
        delay_frames = [row[1] for row in self._recent]
        delays = sorted(row[2] for row in self._recent)
        busy = sorted(row[3] for row in self._recent)
        tails = sorted(row[4] for row in self._recent)
        last = list(self._recent)[-LAST_FRAMES:]
        return {
            "frames": self.frames,
            "empty_frames": self.empty_frames,
            "passes": sorted(self.pass_names),
            "gpu_offset_ns": self.gpu_offset_ns,
            "delay_frames_min": min(delay_frames, default=None),
            "delay_frames_max": max(delay_frames, default=None),
            "delay_ms_p50": delays[len(delays) // 2] if delays else None,
            "delay_ms_max": delays[-1] if delays else None,
            "busy_ms_p50": busy[len(busy) // 2] if busy else None,
            "tail_ms_p50": tails[len(tails) // 2] if tails else None,
            "last_busy_ms": [[row[0], row[3]] for row in last],
        }
