"""Headroom accounting: the idle gaps of rendering, per slot and per execution window.

Headroom is time the renderer leaves the device idle:
- intra-frame gaps: from a pass_end to the next pass_begin of the same frame (also from
  frame_begin to the first pass, slot `frame_start`, and from the last pass to frame_end);
- the inter-frame gap: from frame_end to the next frame_begin, bounded by the frame budget (an
  engine that pauses for a second does not create a second of usable headroom).
Each gap belongs to a slot (`after:<pass>`, `frame_start`, `inter_frame`) whose length is
tracked online; totals are kept per execution window of fixed length (one SLO period).

Real engines send imperfect streams, and every one of these is well-defined here: a pass_begin
without pass_end (the next frame_end or frame_begin closes it), frames without passes,
duplicated events, timestamps that go backwards (a negative gap is no gap), and long silences
or timestamp jumps: an intra-frame gap counts at most one window, and a jump over more than
MAX_EMPTY_WINDOWS windows emits that many empty windows and moves the window grid forward,
so a stall of minutes costs a few window callbacks, not thousands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lego_embed.errors import RuntimeConfigError
from lego_embed.runtime.events import FRAME_BEGIN, FRAME_END, PASS_BEGIN, PASS_END, EngineEvent

INTER_FRAME_SLOT = "inter_frame"
FRAME_START_SLOT = "frame_start"
GAP_ALPHA = 0.1
MAX_EMPTY_WINDOWS = 3
MIN_SLACK_FRAMES = 30  # frames measured before the next frame's slack is trusted (the EWMA
# deviation starts at 0 and reaches 96% of its settled value after 30 frames)


@dataclass(frozen=True)
class WindowHeadroom:
    """Headroom inside one execution window [start_ns, start_ns + window length), in ms."""

    index: int
    start_ns: int
    intra_ms: float
    inter_ms: float

    @property
    def total_ms(self) -> float:
        return self.intra_ms + self.inter_ms


@dataclass
class GapEstimate:
    """Running estimate of a length (one slot's gaps, or the frames' render time): EWMA mean
    and mean absolute deviation in ms."""

    mean_ms: float
    deviation_ms: float
    count: int = 1

    def update(self, length_ms: float, alpha: float = GAP_ALPHA) -> None:
        self.deviation_ms += alpha * (abs(length_ms - self.mean_ms) - self.deviation_ms)
        self.mean_ms += alpha * (length_ms - self.mean_ms)
        self.count += 1

    def conservative_ms(self, deviations: float = 2.0) -> float:
        """A length most gaps of this slot reach: mean minus `deviations` deviations, >= 0."""
        return max(0.0, self.mean_ms - deviations * self.deviation_ms)


@dataclass(frozen=True)
class OpenGap:
    """The gap the renderer is in right now: its slot, start (ns) and estimated end (ns).

    slack_ns: how far work may run past the end of an inter-frame gap of a vsync-paced engine
    without the next frame missing its vsync (the frame budget minus the next frame's
    conservatively long render time; 0 for every other gap and before MIN_SLACK_FRAMES frames)."""

    slot: str
    start_ns: int
    end_estimate_ns: int
    slack_ns: int = 0

    @property
    def inter_frame(self) -> bool:
        return self.slot == INTER_FRAME_SLOT


class HeadroomTracker:
    """Turns engine events into gaps, per-slot gap estimates and per-window headroom totals.

    `frame_budget_ms` bounds the inter-frame gap; `window_ms` is the execution window (one SLO
    period). With `vsync_paced` (the default) the next frame is expected on the next vsync tick,
    estimated from the last frame_begin plus whole frame budgets; otherwise from the slot's
    conservative estimate. It also tracks the frames' render time (frame_begin to frame_end,
    `frame_length`), from which the next frame's slack is estimated. `on_window(WindowHeadroom)`
    is called as each window closes. Not thread-safe: feed it from one thread.
    """

    def __init__(
        self,
        frame_budget_ms: float = 1000.0 / 60.0,
        window_ms: float = 300.0,
        vsync_paced: bool = True,
        on_window: Callable[[WindowHeadroom], None] | None = None,
        gap_deviations: float = 2.0,
    ) -> None:
        self.frame_budget_ns = round(frame_budget_ms * 1e6)
        self.window_ns = round(window_ms * 1e6)
        if self.frame_budget_ns < 1 or self.window_ns < 1:
            raise RuntimeConfigError(
                f"frame budget {frame_budget_ms} ms and window {window_ms} ms must each be at "
                "least 1 ns (1e-6 ms)"
            )
        self.vsync_paced = vsync_paced
        self.on_window = on_window
        self.gap_deviations = gap_deviations
        self.slots: dict[str, GapEstimate] = {}
        self.windows: list[WindowHeadroom] = []
        self.frames = 0
        self._origin_ns: int | None = None
        self._window_intra_ms = 0.0
        self._window_inter_ms = 0.0
        self._gap: tuple[str, int] | None = None
        self._frame_begin_ns: int | None = None
        self.frame_length: GapEstimate | None = None  # frame_begin to frame_end, ms
        self._frame_open = False  # a frame_begin not yet closed by a frame_end

    @property
    def window_ms(self) -> float:
        return self.window_ns / 1e6

    def on_event(self, event: EngineEvent) -> None:
        t_ns = event.t_ns
        if self._origin_ns is None:
            self._origin_ns = t_ns
        if event.kind == FRAME_BEGIN:
            if self._gap is not None and self._gap[0] == INTER_FRAME_SLOT:
                length_ns = min(t_ns - self._gap[1], self.frame_budget_ns)
                self._add_gap(INTER_FRAME_SLOT, t_ns - length_ns, t_ns)
            self._frame_begin_ns = t_ns
            self._frame_open = True
            self._gap = (FRAME_START_SLOT, t_ns)
            self.frames += 1
        elif event.kind == PASS_BEGIN:
            if self._gap is not None and self._gap[0] != INTER_FRAME_SLOT:
                self._add_gap(self._gap[0], self._gap[1], t_ns)
            self._gap = None
        elif event.kind == PASS_END:
            self._gap = (f"after:{event.name}", t_ns)
        elif event.kind == FRAME_END:
            if self._gap is not None and self._gap[0] != INTER_FRAME_SLOT:
                self._add_gap(self._gap[0], self._gap[1], t_ns)
            self._note_frame_length(t_ns)
            self._gap = (INTER_FRAME_SLOT, t_ns)
        self._close_windows(t_ns)

    def _note_frame_length(self, end_ns: int) -> None:
        """The render time of the frame a frame_end closes (only the first frame_end after a
        frame_begin counts; a hitch counts as at most two frame budgets)."""
        if not self._frame_open or self._frame_begin_ns is None or end_ns < self._frame_begin_ns:
            return
        self._frame_open = False
        length_ms = min(end_ns - self._frame_begin_ns, 2 * self.frame_budget_ns) / 1e6
        if self.frame_length is None:
            self.frame_length = GapEstimate(length_ms, 0.0)
        else:
            self.frame_length.update(length_ms)

    def _add_gap(self, slot: str, start_ns: int, end_ns: int) -> None:
        length_ns = end_ns - start_ns
        if length_ns < 0:
            return
        if length_ns > self.window_ns:  # a stall inside a frame: no usable headroom beyond
            start_ns, length_ns = end_ns - self.window_ns, self.window_ns
        estimate = self.slots.get(slot)
        if estimate is None:
            self.slots[slot] = GapEstimate(length_ns / 1e6, 0.0)
        else:
            estimate.update(length_ns / 1e6)
        self._close_windows(start_ns)
        inter = slot == INTER_FRAME_SLOT
        t_ns = start_ns
        while t_ns < end_ns:
            window_end_ns = self._window_end_ns()
            part_end_ns = min(end_ns, window_end_ns)
            part_ms = (part_end_ns - t_ns) / 1e6
            if inter:
                self._window_inter_ms += part_ms
            else:
                self._window_intra_ms += part_ms
            t_ns = part_end_ns
            if t_ns >= window_end_ns:
                self._emit_window()

    def _window_end_ns(self) -> int:
        assert self._origin_ns is not None
        return self._origin_ns + (len(self.windows) + 1) * self.window_ns

    def _emit_window(self) -> None:
        assert self._origin_ns is not None
        index = len(self.windows)
        window = WindowHeadroom(
            index, self._origin_ns + index * self.window_ns, self._window_intra_ms,
            self._window_inter_ms,
        )
        self.windows.append(window)
        self._window_intra_ms = self._window_inter_ms = 0.0
        if self.on_window is not None:
            self.on_window(window)

    def _close_windows(self, t_ns: int) -> None:
        if self._origin_ns is None or t_ns < self._window_end_ns():
            return
        self._emit_window()
        behind = (t_ns - (self._window_end_ns() - self.window_ns)) // self.window_ns
        if behind > MAX_EMPTY_WINDOWS:  # a long silence: a few empty windows, then a new grid
            self._origin_ns += (behind - MAX_EMPTY_WINDOWS) * self.window_ns
        while t_ns >= self._window_end_ns():
            self._emit_window()

    def open_gap(self) -> OpenGap | None:
        """The gap the renderer is in now, with its estimated end, or None during a pass.

        The estimated end is conservative: the slot's typical length minus `gap_deviations`
        deviations (an unseen slot is estimated as zero), and for the inter-frame gap of a
        vsync-paced engine the next vsync tick, never later than one frame budget after the end;
        that gap also carries the next frame's slack (`next_frame_slack_ns`).
        """
        if self._gap is None:
            return None
        slot, start_ns = self._gap
        if slot == INTER_FRAME_SLOT and self.vsync_paced and self._frame_begin_ns is not None:
            ticks = -(-(start_ns - self._frame_begin_ns) // self.frame_budget_ns)
            end_ns = self._frame_begin_ns + max(ticks, 1) * self.frame_budget_ns
            return OpenGap(slot, start_ns, min(end_ns, start_ns + self.frame_budget_ns),
                           self.next_frame_slack_ns())
        estimate = self.slots.get(slot)
        length_ms = estimate.conservative_ms(self.gap_deviations) if estimate else 0.0
        return OpenGap(slot, start_ns, start_ns + round(length_ms * 1e6))

    def next_frame_slack_ns(self) -> int:
        """Time (ns) the next frame can start late and still end by its vsync: the frame budget
        minus its render time (frame_begin to frame_end) estimated long, mean plus
        `gap_deviations` deviations; 0 before MIN_SLACK_FRAMES frames or when frames fill the
        budget."""
        estimate = self.frame_length
        if estimate is None or estimate.count < MIN_SLACK_FRAMES:
            return 0
        long_ms = estimate.mean_ms + self.gap_deviations * estimate.deviation_ms
        return max(0, self.frame_budget_ns - round(long_ms * 1e6))

    def headroom_per_frame_ms(self) -> float:
        """Mean headroom of one frame from the slot estimates (all slots' mean lengths), in ms."""
        return sum(estimate.mean_ms for estimate in self.slots.values())
