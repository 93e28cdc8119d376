"""Headroom prediction: the next execution window's total headroom from the last windows.

`HeadroomPredictor` is LEGO's linear regression on the totals of the last 3 windows, but with
weights fitted online by least squares on the running history instead of LEGO's hard-coded
per-scene weights, so a new game or scene needs no calibration. The fit is regularised towards
the 3-window moving average (the regression starts as that baseline and moves away from it as
evidence accumulates) and forgets old windows exponentially, so it follows scene changes.
`LastValuePredictor` and `MovingAveragePredictor` are the baselines it is measured against.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

import numpy as np


class WindowPredictor(Protocol):
    """Predicts the next window's total headroom (ms) from the totals observed so far."""

    def observe(self, total_ms: float) -> None: ...

    def predict(self) -> float | None: ...


class LastValuePredictor:
    """Baseline: the next window has the headroom of the last one (ms)."""

    def __init__(self) -> None:
        self._last: float | None = None

    def observe(self, total_ms: float) -> None:
        self._last = total_ms

    def predict(self) -> float | None:
        return self._last


class MovingAveragePredictor:
    """Baseline: the mean headroom (ms) of the last `windows` windows."""

    def __init__(self, windows: int = 3) -> None:
        self._recent: deque[float] = deque(maxlen=windows)

    def observe(self, total_ms: float) -> None:
        self._recent.append(total_ms)

    def predict(self) -> float | None:
        return sum(self._recent) / len(self._recent) if self._recent else None


class HeadroomPredictor:
    """Linear regression of the next window's headroom on the last `lags` windows' totals (ms).

    Model: h[t] = w1*h[t-1] + w2*h[t-2] + w3*h[t-3] + b, in units of the running mean headroom
    (so the fit is scale-free across games). Fitted by weighted least squares over every past
    window, each weighted `forgetting ** age`, plus a ridge term of strength `prior_strength`
    (in windows) pulling w towards the moving average (1/3, 1/3, 1/3, b=0). Before `lags`
    windows exist it predicts the mean of what it has seen. Cost: one 4x4 solve per window
    (the prediction is computed once per window).
    Well-defined on any input: a negative or non-finite total is not an observation, the fit
    waits until the running mean is positive (a game that starts with windows of no headroom),
    and a prediction is always a finite number >= 0.
    """

    def __init__(
        self, lags: int = 3, forgetting: float = 0.97, prior_strength: float = 0.02
    ) -> None:
        self.lags = lags
        self.forgetting = forgetting
        self.prior_strength = prior_strength
        self._recent: deque[float] = deque(maxlen=lags)
        self._xtx = np.zeros((lags + 1, lags + 1))
        self._xty = np.zeros(lags + 1)
        self._prior = np.append(np.full(lags, 1.0 / lags), 0.0)
        self._scale_sum = 0.0
        self._count = 0
        self.weights = self._prior.copy()
        self._prediction: float | None = None  # remembered until the next window

    @property
    def scale_ms(self) -> float:
        return self._scale_sum / self._count if self._count else 1.0

    def observe(self, total_ms: float) -> None:
        if not math.isfinite(total_ms) or total_ms < 0:
            return
        self._prediction = None
        self._count += 1
        self._scale_sum += total_ms
        scale = self.scale_ms
        if len(self._recent) == self.lags and scale > 0:
            x = np.append(np.array(self._recent)[::-1] / scale, 1.0)
            xtx = self.forgetting * self._xtx + np.outer(x, x)
            xty = self.forgetting * self._xty + x * (total_ms / scale)
            ridge = self.prior_strength * np.eye(self.lags + 1)
            weights = np.linalg.solve(xtx + ridge, xty + ridge @ self._prior)
            if np.all(np.isfinite(weights)):
                self._xtx, self._xty, self.weights = xtx, xty, weights
        self._recent.append(total_ms)

    def predict(self) -> float | None:
        if self._prediction is None:
            self._prediction = self._predict()
        return self._prediction

    def _predict(self) -> float | None:
        if not self._recent:
            return None
        mean = sum(self._recent) / len(self._recent)
        scale = self.scale_ms
        if len(self._recent) < self.lags or scale <= 0:
            return mean
        x = np.append(np.array(self._recent)[::-1] / scale, 1.0)
        predicted = float(x @ self.weights) * scale
        return max(0.0, predicted) if math.isfinite(predicted) else mean
