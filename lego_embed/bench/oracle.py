"""The `oracle` policy of the co-location benchmark: `lego` told the replay's true future.

LEGO's scheduler chooses a skip level from the predicted headroom of the coming window. The
oracle is the same scheduler with the prediction replaced by the truth: the headroom of each
execution window of the replayed segment's contention-free schedule (`simulate_frames`, the
same pass model and window grid: both start at the replay's first frame_begin). The difference
between the oracle's expected accuracy and `lego`'s at equal SLO attainment (`skip_regret`) is
what prediction errors cost in skip-level decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lego_embed.engines.trace_replay import PassModel, simulate_frames
from lego_embed.runtime.headroom import HeadroomTracker


class OracleHeadroomPredictor:
    """A WindowPredictor that knows every window's true headroom total (ms): `predict()` after
    n observed windows returns window n's total (the last one past the end)."""

    def __init__(self, totals_ms: Sequence[float]) -> None:
        self.totals_ms = list(totals_ms)
        self._observed = 0

    def observe(self, total_ms: float) -> None:
        self._observed += 1

    def predict(self) -> float | None:
        if not self.totals_ms:
            return None
        return self.totals_ms[min(self._observed, len(self.totals_ms) - 1)]


def true_window_totals_ms(
    render_ms: Sequence[float], window_ms: float, pass_model: PassModel | None = None
) -> list[float]:
    """Headroom (ms) of every execution window of the contention-free replay of `render_ms`."""
    tracker = HeadroomTracker(window_ms=window_ms)
    for _, events in simulate_frames(render_ms, pass_model):
        for event in events:
            tracker.on_event(event)
    return [window.total_ms for window in tracker.windows]


def oracle_factory(
    render_ms: Sequence[float], window_ms: float, pass_model: PassModel | None = None
) -> Callable[[], OracleHeadroomPredictor]:
    """What `Runtime(predictor=...)` takes: a fresh oracle for the segment (after a restart
    too)."""
    totals = true_window_totals_ms(render_ms, window_ms, pass_model)
    return lambda: OracleHeadroomPredictor(totals)
