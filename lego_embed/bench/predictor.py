"""Headroom-predictor benchmark: prediction error of the next window's headroom on real traces.

Each trace is replayed contention-free (`simulate_frames`, default pass model, 60 FPS vsync)
into a HeadroomTracker with windows of one SLO period; before each window closes, every predictor
predicts its total from the windows before it. Errors are absolute percentage errors of the
window total, over every window from the fourth on (the first three feed the regression's lags).
`hindsight_centred_mean` is the error of a predictor that knows, in hindsight, the mean of the 9
windows centred on the predicted one: a reference for the window-to-window noise of a trace
that no history of past totals can explain (not a strict bound: level shifts raise it).
`hindsight_linear` is the error of the best fixed-weight regression on the last 3 windows
(plus intercept), fitted by least squares on the whole trace in hindsight: what LEGO's
hand-tuned per-scene weights could reach at best, and roughly what an online fit can approach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lego_embed.engines.trace_replay import PassModel, RenderTrace, simulate_frames
from lego_embed.runtime.headroom import HeadroomTracker
from lego_embed.runtime.predictor import (
    HeadroomPredictor,
    LastValuePredictor,
    MovingAveragePredictor,
    WindowPredictor,
)

WARMUP_WINDOWS = 3
CENTRED_HALF_SPAN = 4


@dataclass(frozen=True)
class PredictorError:
    """Mean and max absolute percentage error (%) of one predictor over one trace's windows."""

    mean_abs_pct_error: float
    max_abs_pct_error: float


def window_totals_ms(
    trace: RenderTrace, window_ms: float, pass_model: PassModel | None = None
) -> list[float]:
    """Total headroom (ms) of every complete execution window of the contention-free replay."""
    tracker = HeadroomTracker(window_ms=window_ms)
    for _, events in simulate_frames(trace.render_ms, pass_model):
        for event in events:
            tracker.on_event(event)
    return [window.total_ms for window in tracker.windows]


def predictor_error(predictor: WindowPredictor, totals_ms: list[float]) -> PredictorError:
    errors = []
    for index, total_ms in enumerate(totals_ms):
        predicted_ms = predictor.predict()
        if index >= WARMUP_WINDOWS and predicted_ms is not None and total_ms > 0:
            errors.append(abs(predicted_ms - total_ms) / total_ms * 100.0)
        predictor.observe(total_ms)
    if not errors:
        return PredictorError(float("nan"), float("nan"))
    return PredictorError(float(np.mean(errors)), float(np.max(errors)))


def hindsight_centred_mean_pct(totals_ms: list[float]) -> float:
    """Mean abs % error of the hindsight centred-mean predictor (see the module docstring)."""
    values = np.asarray(totals_ms)
    errors = [
        abs(values[i] - values[max(0, i - CENTRED_HALF_SPAN) : i + CENTRED_HALF_SPAN + 1]
            .mean()) / values[i] * 100.0
        for i in range(WARMUP_WINDOWS, len(values)) if values[i] > 0
    ]
    return float(np.mean(errors)) if errors else float("nan")


def hindsight_linear_pct(totals_ms: list[float], lags: int = WARMUP_WINDOWS) -> float:
    """Mean abs % error of the in-hindsight least-squares fit (see the module docstring)."""
    values = np.asarray(totals_ms)
    if len(values) <= lags + 1:
        return float("nan")
    columns = [values[lags - k - 1 : len(values) - k - 1] for k in range(lags)]
    features = np.column_stack([*columns, np.ones(len(values) - lags)])
    target = values[lags:]
    weights = np.linalg.lstsq(features, target, rcond=None)[0]
    keep = target > 0
    errors = np.abs(features @ weights - target)[keep] / target[keep] * 100.0
    return float(errors.mean()) if keep.any() else float("nan")


def benchmark_trace(trace: RenderTrace, window_ms: float) -> dict:
    """One row of predictor.json: errors of the regression and baselines, hindsight ref, in %."""
    totals_ms = window_totals_ms(trace, window_ms)
    regression = predictor_error(HeadroomPredictor(), totals_ms)
    last_value = predictor_error(LastValuePredictor(), totals_ms)
    moving_average = predictor_error(MovingAveragePredictor(), totals_ms)
    return {
        "trace": trace.name,
        "window_ms": window_ms,
        "windows": len(totals_ms),
        "mean_headroom_ms": float(np.mean(totals_ms)) if totals_ms else float("nan"),
        "mean_abs_pct_error": round(regression.mean_abs_pct_error, 3),
        "max_abs_pct_error": round(regression.max_abs_pct_error, 3),
        "baselines": {
            "last_value": {
                "mean_abs_pct_error": round(last_value.mean_abs_pct_error, 3),
                "max_abs_pct_error": round(last_value.max_abs_pct_error, 3),
            },
            "moving_average_3": {
                "mean_abs_pct_error": round(moving_average.mean_abs_pct_error, 3),
                "max_abs_pct_error": round(moving_average.max_abs_pct_error, 3),
            },
        },
        "hindsight_centred_mean_abs_pct_error": round(hindsight_centred_mean_pct(totals_ms), 3),
        "hindsight_linear_abs_pct_error": round(hindsight_linear_pct(totals_ms), 3),
    }
