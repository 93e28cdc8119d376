"""Trace-replay engine: real games' per-frame render times, replayed as passes on a shared core.

Three parts:
- the loader (`load_traces`): reads every CSV in `../shared/traces`, finding columns by header
  name and surviving the files' quirks (UTF-8 BOM, CRLF, repeated frame numbers with a
  near-zero second row, a last row cut short);
- the pass model (`PassModel`): the traces give one render time per frame, so each frame's render
  time is split into passes with gaps between them (documented below, configurable);
- the replay: `simulate_frames` computes the contention-free schedule (for the predictor
  benchmark and tests); `RenderProcess` replays it for real in a separate process pinned to one
  core, busy-burning each pass's CPU time and publishing EngineEvents through a pipe, so the
  render work competes with an LLM worker pinned to the same core.

Frame timing (vsync, double buffered): frames start on a vsync tick of period
`frame_budget_ms` (60 FPS: 16.67 ms). A frame begins at the first tick at or after the previous
frame's end and must end before the next tick (its vsync deadline); otherwise it is missed.
"""

from __future__ import annotations

import csv
import ctypes
import io
import math
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lego_embed.engines.event_ring import EventRingReader, EventRingWriter, create_ring_file
from lego_embed.errors import TraceFormatError
from lego_embed.runtime.events import (
    FRAME_BEGIN,
    FRAME_END,
    PASS_BEGIN,
    PASS_END,
    EngineEvent,
)

FRAME_BUDGET_60FPS_MS = 1000.0 / 60.0
PR_SET_TIMERSLACK = 29
RENDER_COLUMN_KEY = "rendertime"
FRAME_NUMBER_COLUMN = "framenum"
BUDGET_COLUMN_PREFIX = "frametime"


@dataclass(frozen=True)
class RenderTrace:
    """One game's per-frame render times in ms, in frame order, from one trace file column.

    `name` is `<file stem>` or `<file stem>:<column>` for multi-game files; `dropped_rows` counts
    rows the loader left out (near-zero duplicates of a frame number, a truncated last row,
    unparsable fields).
    """

    name: str
    path: Path
    column: str
    render_ms: tuple[float, ...]
    dropped_rows: int = 0

    @property
    def frames(self) -> int:
        return len(self.render_ms)


def _normalise_header(name: str) -> str:
    """Header names compare case-insensitively, without a BOM or surrounding blanks."""
    return name.strip().lstrip("\ufeff").strip().lower()


def _parse_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0.0 else None


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise TraceFormatError(
            f"trace file {path} does not exist; pass a CSV from ../shared/traces"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TraceFormatError(
            f"trace file {path} is not UTF-8 text ({error}); export the trace as CSV"
        ) from error
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if any(f.strip() for f in row)]
    if not rows:
        raise TraceFormatError(f"trace file {path} is empty; it needs a header row and frame rows")
    return [_normalise_header(h) for h in rows[0]], rows[1:]


def _truncated(row: list[str], header: list[str], is_last: bool) -> bool:
    """A last row with fewer fields than the header was cut short: none of it can be trusted."""
    return is_last and len(row) < len(header)


def _per_frame_trace(path: Path, header: list[str], rows: list[list[str]]) -> RenderTrace:
    render_col = next(i for i, h in enumerate(header) if h.startswith(RENDER_COLUMN_KEY))
    frame_col = header.index(FRAME_NUMBER_COLUMN)
    by_frame: dict[int, float] = {}
    dropped = 0
    for index, row in enumerate(rows):
        too_short = len(row) <= max(render_col, frame_col)
        if too_short or _truncated(row, header, index == len(rows) - 1):
            dropped += 1
            continue
        render_ms = _parse_float(row[render_col])
        frame_number = _parse_float(row[frame_col])
        if render_ms is None or frame_number is None:
            dropped += 1
            continue
        key = int(frame_number)
        if key in by_frame:
            dropped += 1  # a repeated frame number: keep the frame's real (largest) render time
            by_frame[key] = max(by_frame[key], render_ms)
        else:
            by_frame[key] = render_ms
    render = tuple(by_frame[k] for k in sorted(by_frame))
    return RenderTrace(path.stem, path, header[render_col], render, dropped)


def _multi_game_traces(path: Path, header: list[str], rows: list[list[str]]) -> list[RenderTrace]:
    game_cols = [i for i, h in enumerate(header) if h and not h.startswith(BUDGET_COLUMN_PREFIX)]
    traces = []
    for col in game_cols:
        values: list[float] = []
        dropped = 0
        for index, row in enumerate(rows):
            value = _parse_float(row[col]) if len(row) > col else None
            if value is None or (index == len(rows) - 1 and len(row) < len(header)):
                dropped += 1
                continue
            values.append(value)
        name = f"{path.stem}:{header[col]}"
        traces.append(RenderTrace(name, path, header[col], tuple(values), dropped))
    return traces


def load_traces(path: str | Path) -> list[RenderTrace]:
    """Every game's render trace in one CSV file (one for per-frame logs, one per game column).

    Per-frame logs have a `framenum` and a `rendertime(ms)` column (found by name, any order);
    multi-game tables have one render-time column per game and `frametime*` budget columns.
    Raises TraceFormatError when the file is missing, not CSV, has no render-time column or
    fewer than 2 usable frames.
    """
    path = Path(path)
    header, rows = _read_rows(path)
    has_render = any(h.startswith(RENDER_COLUMN_KEY) for h in header)
    if has_render and FRAME_NUMBER_COLUMN in header:
        traces = [_per_frame_trace(path, header, rows)]
    elif has_render:
        raise TraceFormatError(
            f"trace file {path} has a render-time column but no '{FRAME_NUMBER_COLUMN}' column; "
            f"add the frame number column (header: {header})"
        )
    else:
        traces = _multi_game_traces(path, header, rows)
    if not traces:
        raise TraceFormatError(
            f"trace file {path} has no render-time column (header: {header}); expected "
            f"'{RENDER_COLUMN_KEY}(ms)' with '{FRAME_NUMBER_COLUMN}', or one column per game"
        )
    for trace in traces:
        if trace.frames < 2:
            raise TraceFormatError(
                f"trace {trace.name} in {path} has {trace.frames} usable frame(s); it needs at "
                "least 2 rows with a numeric, non-negative render time"
            )
    return traces


def load_trace(spec: str | Path) -> RenderTrace:
    """One trace by `path` or `path:column` (a game column of a multi-game file), or by name.

    Names are those of `RenderTrace.name`, looked up in `shared_traces_dir()`.
    """
    spec = str(spec)
    candidates: list[RenderTrace] = []
    path_part, _, column = spec.partition(".csv:")
    path = Path(path_part + ".csv") if column else Path(spec)
    if path.is_file():
        candidates = load_traces(path)
    else:
        directory = shared_traces_dir()
        if directory.is_dir():
            candidates = [t for f in sorted(directory.glob("*.csv")) for t in load_traces(f)]
            column = ""
            candidates = [t for t in candidates if t.name == spec]
    if column:
        candidates = [t for t in candidates if t.column == column.strip().lower()]
    if len(candidates) != 1:
        raise TraceFormatError(
            f"trace {spec!r} names {len(candidates)} traces; give a CSV path, 'file.csv:column' "
            "for a game of a multi-game file, or a name from `lego-embed bench predictor`"
        )
    return candidates[0]


def shared_traces_dir() -> Path:
    """`../shared/traces` next to the repository root (the shared data, used by path)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "traces"


def all_shared_traces(directory: Path | None = None) -> list[RenderTrace]:
    """Every trace of every CSV in the shared traces folder, sorted by name."""
    directory = directory or shared_traces_dir()
    if not directory.is_dir():
        raise TraceFormatError(f"no trace folder at {directory}; it should be ../shared/traces")
    traces = [t for f in sorted(directory.glob("*.csv")) for t in load_traces(f)]
    return sorted(traces, key=lambda t: t.name)


@dataclass(frozen=True)
class PassModel:
    """How one frame's render time (ms) is split into render passes and the gaps between them.

    A frame of render time r ms spans r ms from frame_begin to frame_end. Of it,
    `intra_gap_fraction * r` is idle gaps between consecutive passes (the GPU waiting for the
    CPU to submit the next pass), split among the len(passes)-1 gaps by `gap_weights`; the rest
    is busy passes, split by `pass_weights`. Defaults: 4 passes shadow/gbuffer/lighting/post with
    weights 0.2/0.35/0.3/0.15 and 15% of the frame as 3 equal gaps, so a 10 ms frame has 8.5 ms
    of passes and three 0.5 ms gaps, followed by the inter-frame gap up to the next vsync.
    """

    passes: tuple[str, ...] = ("shadow", "gbuffer", "lighting", "post")
    pass_weights: tuple[float, ...] = (0.2, 0.35, 0.3, 0.15)
    intra_gap_fraction: float = 0.15
    gap_weights: tuple[float, ...] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.pass_weights) != len(self.passes) or not self.passes:
            raise TraceFormatError("pass model: give one weight per pass and at least one pass")
        if len(self.gap_weights) != len(self.passes) - 1:
            raise TraceFormatError("pass model: give one gap weight per gap (passes - 1)")
        if not 0.0 <= self.intra_gap_fraction < 1.0:
            raise TraceFormatError("pass model: intra_gap_fraction must be in [0, 1)")
        if min(self.pass_weights) <= 0 or (self.gap_weights and min(self.gap_weights) < 0):
            raise TraceFormatError("pass model: weights must be positive")

    def split(self, render_ms: float) -> tuple[list[float], list[float]]:
        """(busy ms of each pass, idle ms of each gap between passes) for one frame."""
        busy_ms = render_ms * (1.0 - self.intra_gap_fraction)
        gap_total_ms = render_ms - busy_ms
        pass_sum, gap_sum = sum(self.pass_weights), sum(self.gap_weights)
        passes = [busy_ms * w / pass_sum for w in self.pass_weights]
        gaps = [gap_total_ms * w / gap_sum if gap_sum else 0.0 for w in self.gap_weights]
        return passes, gaps


@dataclass(frozen=True)
class FrameRecord:
    """One replayed frame: begin, end and vsync deadline in monotonic ns, and pass spans."""

    index: int
    render_ms: float
    begin_ns: int
    end_ns: int
    deadline_ns: int
    pass_spans_ns: tuple[tuple[str, int, int], ...] = field(default=())

    @property
    def missed(self) -> bool:
        return self.end_ns > self.deadline_ns

    @property
    def frame_ms(self) -> float:
        return (self.end_ns - self.begin_ns) / 1e6


def next_vsync_ns(t_ns: int, origin_ns: int, budget_ns: int) -> int:
    """The first vsync tick (origin + k * budget) at or after t_ns."""
    ticks = -(-(t_ns - origin_ns) // budget_ns)
    return origin_ns + max(ticks, 0) * budget_ns


def simulate_frames(
    render_ms: Sequence[float],
    pass_model: PassModel | None = None,
    frame_budget_ms: float = FRAME_BUDGET_60FPS_MS,
    origin_ns: int = 0,
) -> Iterator[tuple[FrameRecord, list[EngineEvent]]]:
    """The contention-free replay: each frame's record and its engine events, in time order."""
    pass_model = pass_model or PassModel()
    budget_ns = round(frame_budget_ms * 1e6)
    t_ns = origin_ns
    for index, frame_render_ms in enumerate(render_ms):
        begin_ns = next_vsync_ns(t_ns, origin_ns, budget_ns)
        events = [EngineEvent(FRAME_BEGIN, "", begin_ns)]
        passes, gaps = pass_model.split(frame_render_ms)
        spans = []
        t_ns = begin_ns
        for k, (name, busy_ms) in enumerate(zip(pass_model.passes, passes, strict=True)):
            end_ns = t_ns + round(busy_ms * 1e6)
            events += [EngineEvent(PASS_BEGIN, name, t_ns), EngineEvent(PASS_END, name, end_ns)]
            spans.append((name, t_ns, end_ns))
            t_ns = end_ns + (round(gaps[k] * 1e6) if k < len(gaps) else 0)
        events.append(EngineEvent(FRAME_END, "", t_ns))
        deadline_ns = begin_ns + budget_ns
        yield FrameRecord(index, frame_render_ms, begin_ns, t_ns, deadline_ns, tuple(spans)), events


def set_timer_slack_ns(slack_ns: int) -> bool:
    """Linux: lets this thread's sleeps end within slack_ns of their deadline (default 50 us),
    so pass gaps and vsync waits are replayed precisely. False where prctl is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(slack_ns), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _burn_cpu_until_ns(stop_cpu_ns: int) -> None:
    """Busy-computes until this thread's CPU time reaches stop_cpu_ns (`time.thread_time_ns`):
    a fixed amount of work, which takes longer in wall time when the core is shared."""
    while time.thread_time_ns() < stop_cpu_ns:
        pass


def _sleep_until_ns(t_ns: int) -> None:
    remaining_ns = t_ns - time.monotonic_ns()
    if remaining_ns > 0:
        time.sleep(remaining_ns / 1e9)


class CudaPassBurner:
    """Replays a render pass as GPU work in the render process's own CUDA context (as a game's
    graphics would be): fp16 square matmuls on a highest-priority stream, their count sized by
    a calibration at start so that an uncontended pass takes its trace time. Like the CPU burn,
    the work is fixed, so it takes longer when the LLM competes for the GPU.
    In the render process it has a CUDA context of its own, time-sliced with the LLM's by the
    driver (as a game's graphics API would be); in the LLM's own process (placement "thread")
    it shares the LLM's context, and its highest priority orders its kernels before the LLM's
    lowest-priority ones at every kernel boundary. Runs only where a GPU is (the GPU check).
    `size` (elements per side) makes one matmul take tens of µs on an H100/H200 (2048: about
    17 GFLOP), longer than launching it from Python, so a pass keeps the GPU busy rather than
    waiting for launches; `ms_per_matmul` is the calibrated GPU time of one.
    """

    def __init__(self, device_index: int = 0, size: int = 2048, calibration_matmuls: int = 200):
        import torch

        self.torch = torch
        torch.cuda.set_device(device_index)
        self.stream = torch.cuda.Stream(priority=min(torch.cuda.Stream.priority_range()))
        with torch.cuda.stream(self.stream):
            self.a = torch.randn(size, size, device="cuda", dtype=torch.float16)
            self.b = torch.randn(size, size, device="cuda", dtype=torch.float16)
            self.out = torch.empty_like(self.a)
            for _ in range(20):
                torch.mm(self.a, self.b, out=self.out)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record(self.stream)
            for _ in range(calibration_matmuls):
                torch.mm(self.a, self.b, out=self.out)
            end.record(self.stream)
        end.synchronize()
        self.ms_per_matmul = start.elapsed_time(end) / calibration_matmuls

    def burn_ms(self, busy_ms: float) -> None:
        count = max(1, round(busy_ms / self.ms_per_matmul))
        with self.torch.cuda.stream(self.stream):
            for _ in range(count):
                self.torch.mm(self.a, self.b, out=self.out)
        self.stream.synchronize()


def _render_main(
    render_ms: Sequence[float],
    pass_model: PassModel,
    frame_budget_ms: float,
    start_delay_ms: float,
    core: int | None,
    device: str,
    control: multiprocessing.connection.Connection,
    ring: Path,
    bell: multiprocessing.connection.Connection,
    bell_every_event: bool,
) -> None:
    """The render loop: replays frames for real, stores each event in the event ring as it
    happens (`EventRingWriter`) and sends the vsync origin, then the frame records, on
    `control`; run by the render process, or by a thread of the LLM's process. Closes its
    ends when done, which the readers see as the end of the replay."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    set_timer_slack_ns(1)
    gpu = CudaPassBurner() if device == "cuda" else None
    events = EventRingWriter(ring, bell, pass_model.passes, bell_every_event)
    send = events.send
    budget_ns = round(frame_budget_ms * 1e6)
    origin_ns = time.monotonic_ns() + round(start_delay_ms * 1e6)
    control.send(("origin", origin_ns))
    records = []
    t_ns = origin_ns
    for index, frame_render_ms in enumerate(render_ms):
        slot_ns = next_vsync_ns(max(t_ns, time.monotonic_ns()), origin_ns, budget_ns)
        _sleep_until_ns(slot_ns)
        begin_ns = time.monotonic_ns()
        send(FRAME_BEGIN, "", begin_ns)
        passes, gaps = pass_model.split(frame_render_ms)
        spans = []
        for k, (name, busy_ms) in enumerate(zip(pass_model.passes, passes, strict=True)):
            pass_begin_ns = time.monotonic_ns()
            cpu_begin_ns = time.thread_time_ns()
            send(PASS_BEGIN, name, pass_begin_ns)
            if gpu is None:  # the pass's CPU time includes publishing its begin event
                _burn_cpu_until_ns(cpu_begin_ns + round(busy_ms * 1e6))
            else:
                gpu.burn_ms(busy_ms)
            pass_end_ns = time.monotonic_ns()
            send(PASS_END, name, pass_end_ns)
            spans.append((name, pass_begin_ns, pass_end_ns))
            if k < len(gaps):
                _sleep_until_ns(pass_end_ns + round(gaps[k] * 1e6))
        t_ns = time.monotonic_ns()
        send(FRAME_END, "", t_ns)
        records.append((index, frame_render_ms, begin_ns, t_ns, slot_ns + budget_ns, tuple(spans)))
    control.send(("records", records))
    events.close()
    control.close()


RENDER_PLACEMENTS = ("process", "thread")


class RenderProcess:
    """Replays a trace's frames as render work: in a separate process (placement "process",
    the default), pinned to one core, or in a thread of this process (placement "thread").

    Each pass busy-burns exactly its share of the frame's render time in CPU time (so it takes
    longer in wall time when another thread competes for the core), gaps and the wait for vsync
    sleep. With device="cuda" the passes are GPU work instead (`CudaPassBurner`): in its own
    process it has its own CUDA context, as a game's renderer would; as a thread it shares the
    LLM's context on a highest-priority stream (what stream priority can buy).

    Events (EngineEvents with `time.monotonic_ns()` timestamps) go through a shared-memory
    ring (`engines.event_ring`): after `start(claimed=True)`, `claim_events()` hands its
    reader to a runtime (`Runtime.attach_events`: its worker reads them itself, woken only by
    events that can open a gap); after `start()`, `poll_event()` returns them one by one.
    `origin_ns` is the first vsync tick (known once `poll_event` saw it); after the last frame
    `records` holds every FrameRecord and `done` is True.
    """

    def __init__(
        self,
        trace: RenderTrace,
        frames: int | None = None,
        pass_model: PassModel | None = None,
        frame_budget_ms: float = FRAME_BUDGET_60FPS_MS,
        core: int | None = None,
        start_delay_ms: float = 50.0,
        device: str = "cpu",
        placement: str = "process",
    ) -> None:
        if placement not in RENDER_PLACEMENTS:
            raise ValueError(f"placement {placement!r} is not one of {RENDER_PLACEMENTS}")
        self.render_ms = list(trace.render_ms[: frames or trace.frames])
        self.pass_model = pass_model or PassModel()
        self.frame_budget_ms = frame_budget_ms
        self.core = core
        self.device = device
        self.placement = placement
        self.origin_ns = 0
        self.start_delay_ms = start_delay_ms
        self.records: list[FrameRecord] = []
        self._finished = False
        self._claimed = False
        self._unread: deque[EngineEvent] = deque()
        self._worker: multiprocessing.process.BaseProcess | threading.Thread | None = None
        self._control: multiprocessing.connection.Connection | None = None
        self._events: EventRingReader | None = None

    @property
    def done(self) -> bool:
        """The replay ended (or its process died) and every event was handed out."""
        return self._finished and not self._unread

    def start(self, claimed: bool = False) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, control_out = context.Pipe(duplex=False)
        ring = create_ring_file()
        bell_in, bell_out = context.Pipe(duplex=False)
        self._events = EventRingReader(ring, bell_in, self.pass_model.passes)
        args = (self.render_ms, self.pass_model, self.frame_budget_ms, self.start_delay_ms,
                self.core, self.device, control_out, ring, bell_out, not claimed)
        self._claimed = claimed
        if self.placement == "thread":
            self._worker = threading.Thread(target=_render_main, args=args,
                                            name="lego-embed-render", daemon=True)
            self._worker.start()
            return
        self._worker = context.Process(target=_render_main, args=args, daemon=True)
        self._worker.start()
        for connection in (control_out, bell_out):
            connection.close()  # the child's copies are the only writers: EOF when it ends

    def claim_events(self) -> EventRingReader:
        """The event ring's reader, for one consumer (a runtime's worker); `poll_event()` then
        only follows the replay (origin, records) and returns None."""
        if self._events is None or not self._claimed:
            raise RuntimeError("start(claimed=True) the replay before claiming its events")
        return self._events

    def _read_unclaimed(self) -> None:
        if not self._claimed and self._events is not None:
            self._unread.extend(self._events.read_events())

    def _on_control(self) -> None:
        try:
            message = self._control.recv()
        except EOFError:  # the render ended without its records (it died)
            message = ("records", [])
        if message[0] == "origin":  # sent once the render mapped the event ring
            self.origin_ns = message[1]
            if self._events is not None:
                self._events.remove_file()
        else:  # records: every event was written before them
            self.records = [FrameRecord(*record) for record in message[1]]
            self._read_unclaimed()
            self._finished = True

    def poll_event(self, timeout_s: float) -> EngineEvent | None:
        """The next event, or None: when none came within timeout_s (always, once the events
        are claimed), or at once after the vsync origin came (`origin_ns`) or the replay ended
        (then `done` is True and `records` is filled)."""
        give_up_ns = time.monotonic_ns() + round(max(timeout_s, 0.0) * 1e9)
        while True:
            self._read_unclaimed()
            if self._unread:
                return self._unread.popleft()
            if self._finished or self._control is None:
                return None
            if self._control.poll(0):
                self._on_control()  # the origin or the records: the caller looks at them
                return self._unread.popleft() if self._unread else None
            left_ns = give_up_ns - time.monotonic_ns()
            if left_ns <= 0:
                return None
            if self._claimed:
                multiprocessing.connection.wait([self._control], left_ns / 1e9)
            else:  # every event rings the bell
                self._events.clear_wake()
                if not self._events.has_unread():
                    multiprocessing.connection.wait(
                        [self._control, self._events.wake_fileno()], left_ns / 1e9)

    def join(self, timeout_s: float = 10.0) -> None:
        if isinstance(self._worker, threading.Thread):
            self._worker.join(timeout_s)
            return
        if self._worker is not None:
            self._worker.join(timeout_s)
            if self._worker.is_alive():
                self._worker.terminate()
                self._worker.join(timeout_s)
