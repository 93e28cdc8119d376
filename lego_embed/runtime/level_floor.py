"""The window's skip-level floor from outcomes: raised after a window in which an answer came
late or near its deadline, lowered after calm windows.

`BackPressure.sustaining_level` predicts the floor from predicted costs and measured headroom.
What a run really serves at each level depends on the device (batched prefills, a render that
shares a CPU core), and that prediction was 1.5-3x too low on the simulated device while about
right on the project's CPU VM (docs/BENCHMARKS.md, 2026-11-30 16:00). `OutcomeFloor` asks the
answers instead, once per execution window:
- an answer (the model's action, or a line's first token) at or after RAISE_AT of its deadline,
  a fallback, or a request failed as overdue raises the floor one level (a request superseded
  after LOWER_AT of its deadline counts as an answer then);
- after CALM_WINDOWS windows with answers in a row whose answers all came before LOWER_AT of
  their deadline, it falls one level. A window without answers changes nothing.
While the engine is silent the runtime starts it afresh (`reset`): answers then ran without a
floor and say nothing about the render's load.
"""

from __future__ import annotations

import math

RAISE_AT = 0.8  # an answer after this fraction of its deadline raises the floor
LOWER_AT = 0.5  # a window whose answers all came before this fraction is calm
CALM_WINDOWS = 3  # calm windows in a row before the floor falls one level


class OutcomeFloor:
    """The level floor (0..largest) from the answers of each window (see the module doc)."""

    def __init__(self, largest: int) -> None:
        self.largest = largest
        self.level = 0
        self._worst = 0.0
        self._answers = 0
        self._calm = 0

    def note_answer(self, deadline_fraction: float) -> None:
        """An answer that came at this fraction of its deadline (math.inf: a fallback)."""
        self._answers += 1
        self._worst = max(self._worst, deadline_fraction if math.isfinite(
            deadline_fraction) else math.inf)

    def reset(self) -> None:
        """Back to level 0, with nothing noted."""
        self.level, self._worst, self._answers, self._calm = 0, 0.0, 0, 0

    def on_window(self) -> int:
        """Closes a window; returns the floor for the next one."""
        if self._answers:
            if self._worst >= RAISE_AT:
                self.level = min(self.level + 1, self.largest)
                self._calm = 0
            elif self._worst < LOWER_AT:
                self._calm += 1
                if self._calm >= CALM_WINDOWS:
                    self.level = max(self.level - 1, 0)
                    self._calm = 0
            else:
                self._calm = 0
        self._worst, self._answers = 0.0, 0
        return self.level
