"""Back-pressure: the decision rate the runtime can sustain, and telling the game when it asks
for more.

Sustainable rate at skip level l (decisions per second) =
    measured headroom fraction x usable fraction x 1 s / predicted cost of one decision at l,
where the headroom fraction is the mean of the last HEADROOM_WINDOWS execution windows' measured
headroom over their length (1.0 while no engine reports frames), the usable fraction is the
scheduler's learned share of headroom that dispatch fills, and the cost is the scheduler's
prediction for a fresh request of the current shape (unbatched: batching same-shape requests
only raises what is really sustainable), corrected for the tokens decisions really take.
Demand is the requests asked per second over the last DEMAND_HORIZON_S seconds.

What decisions take differs from the scheduler's plan: a combat decision plans for the action
trie's full depth (4 tokens) and stops once one action is left (after 1), the level choice's
safety margin; a spoken line plans for its first token and generates the whole line. So each
answer is noted with its own plan (`note_answer`: its predicted cost at each level when it was
admitted, the tokens its sampler planned and the tokens it generated), and the cost the rates
count is the mean over answers of that plan plus the difference in tokens times a decode step's
cost at the level (`note_decode_steps`, once per window); the planned cost until the first
answer. `needs_skipping`, which switches the scheduler to its scarce-compute mode, compares
demand with the planned cost instead: the one the level choice works with.

`BackPressure.on_window` compares them once per execution window: the runtime becomes
`overloaded` when demand exceeds the rate at the largest skip level (the most it can serve on
time), and recovers when demand falls below RECOVER_FRACTION of it; each change is an
`OverloadEvent` carrying the rate the game should come down to (TARGET_FRACTION of the largest
level's rate; the full model's rate keeps the best accuracy).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEMAND_HORIZON_S = 2.0
HEADROOM_WINDOWS = 5
COST_ALPHA = 0.2
RECOVER_FRACTION = 0.9
TARGET_FRACTION = 0.85
FLOOR_MARGIN = 0.1  # spare rate the level floor keeps, as a fraction of demand (0.1: 10%)


@dataclass(frozen=True)
class OverloadEvent:
    """A change of the runtime's load state, at `t_ns` (the runtime's clock).

    overloaded: True when demand exceeds what the runtime can serve on time, False when it
    recovered. demand_per_s: requests asked per second (last DEMAND_HORIZON_S s).
    sustainable_per_s: decisions per second at the largest skip level. full_model_per_s: at
    level 0. target_per_s: the rate the game should come down to (below sustainable_per_s).
    """

    t_ns: int
    overloaded: bool
    demand_per_s: float
    sustainable_per_s: float
    full_model_per_s: float
    target_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "t_ns": self.t_ns, "overloaded": self.overloaded,
            "demand_per_s": self.demand_per_s, "sustainable_per_s": self.sustainable_per_s,
            "full_model_per_s": self.full_model_per_s, "target_per_s": self.target_per_s,
        }


class BackPressure:
    """Measures demand and sustainable rate, and emits OverloadEvents (see the module doc).
    Not thread-safe: the runtime's worker owns it."""

    def __init__(self, window_ms: float) -> None:
        self.window_ms = window_ms
        self.overloaded = False
        self._arrivals: deque[int] = deque()
        self._first_arrival_ns: int | None = None
        self._headroom: deque[float] = deque(maxlen=HEADROOM_WINDOWS)
        self._planned_ns: list[float] = []
        self._step_ns: list[float] = []
        self._taken_ns: list[float] = []
        self._usable_fraction = 1.0

    def note_request(self, t_ns: int) -> None:
        """One request asked at t_ns."""
        self._arrivals.append(t_ns)
        if self._first_arrival_ns is None:
            self._first_arrival_ns = t_ns

    def note_costs(self, cost_ns_by_level: Sequence[float]) -> None:
        """The scheduler's predicted compute (ns) of a fresh request at each level, level 0
        first, for the tokens it plans."""
        self._planned_ns = _averaged(self._planned_ns, cost_ns_by_level)

    def note_decode_steps(self, step_ns_by_level: Sequence[float]) -> None:
        """The predicted compute (ns) of one decode step at each level, level 0 first."""
        self._step_ns = _averaged(self._step_ns, step_ns_by_level)

    def note_answer(self, planned_ns_by_level: Sequence[float], planned_tokens: int,
                    tokens: int) -> None:
        """The model answered a request after generating `tokens`; when admitted, its predicted
        compute (ns) at each level was `planned_ns_by_level`, for `planned_tokens` tokens.
        Ignored before the first window's step costs, or without a plan."""
        if len(self._step_ns) != len(planned_ns_by_level):
            return
        extra = tokens - planned_tokens
        self._taken_ns = _averaged(self._taken_ns, [
            planned + extra * step
            for planned, step in zip(planned_ns_by_level, self._step_ns, strict=True)])

    def costs_ns(self) -> list[float]:
        """Compute (ns) of a decision at each level, level 0 first, for the tokens decisions
        take (the planned cost until an answer was noted)."""
        return list(self._taken_ns) if self._taken_ns else list(self._planned_ns)

    def note_window(self, headroom_ms: float, usable_fraction: float) -> None:
        """A closed execution window's measured headroom (ms) and the scheduler's usable
        fraction (0..1)."""
        if math.isfinite(headroom_ms) and headroom_ms >= 0:
            self._headroom.append(min(headroom_ms / self.window_ms, 1.0))
        if math.isfinite(usable_fraction) and usable_fraction > 0:
            self._usable_fraction = usable_fraction

    def demand_per_s(self, now_ns: int) -> float:
        """Requests per second over the last DEMAND_HORIZON_S (or since the first request)."""
        horizon_ns = round(DEMAND_HORIZON_S * 1e9)
        while self._arrivals and self._arrivals[0] <= now_ns - horizon_ns:
            self._arrivals.popleft()
        if self._first_arrival_ns is None:
            return 0.0
        span_ns = min(horizon_ns, max(now_ns - self._first_arrival_ns, round(self.window_ms * 1e6)))
        return len(self._arrivals) / (span_ns / 1e9)

    def headroom_fraction(self) -> float:
        """Mean measured headroom over the last windows as a fraction of wall time (1.0 before
        any window: no renderer to share with)."""
        return sum(self._headroom) / len(self._headroom) if self._headroom else 1.0

    def _rates(self, cost_ns_by_level: Sequence[float]) -> list[float]:
        usable_ns_per_s = self.headroom_fraction() * self._usable_fraction * 1e9
        return [usable_ns_per_s / cost for cost in cost_ns_by_level]

    def sustainable_per_s(self) -> list[float]:
        """Decisions per second at each skip level, level 0 first ([] before any cost)."""
        return self._rates(self.costs_ns())

    def planned_per_s(self) -> list[float]:
        """Decisions per second at each skip level as the scheduler plans them."""
        return self._rates(self._planned_ns)

    def sustaining_level(self, now_ns: int) -> int:
        """The smallest skip level whose sustainable rate is at least demand x (1 +
        FLOOR_MARGIN); the largest level when none is; 0 before any cost is known."""
        rates = self.sustainable_per_s()
        if not rates:
            return 0
        needed = self.demand_per_s(now_ns) * (1.0 + FLOOR_MARGIN)
        return next((level for level, rate in enumerate(rates) if rate >= needed),
                    len(rates) - 1)

    def needs_skipping(self, now_ns: int) -> bool:
        """Whether demand is above what the full model can serve as the scheduler plans it
        (level 0's planned rate): compute is scarce and skipping layers, and batching, decide
        what is on time."""
        rates = self.planned_per_s()
        return bool(rates) and self.demand_per_s(now_ns) > rates[0]

    def on_window(self, now_ns: int) -> OverloadEvent | None:
        """Re-evaluates at a window's end; an event when the load state changed."""
        rates = self.sustainable_per_s()
        if not rates:
            return None
        demand = self.demand_per_s(now_ns)
        most = max(rates)
        if not self.overloaded and demand > most:
            self.overloaded = True
        elif self.overloaded and demand < RECOVER_FRACTION * most:
            self.overloaded = False
        else:
            return None
        return OverloadEvent(now_ns, self.overloaded, demand, most, rates[0],
                             TARGET_FRACTION * most)

    def snapshot(self, now_ns: int) -> dict[str, Any]:
        """For stats(): state, demand, headroom fraction, the rate at every level and the rate
        as planned (`needs_skipping`'s)."""
        rates = self.sustainable_per_s()
        return {
            "overloaded": self.overloaded,
            "demand_per_s": self.demand_per_s(now_ns),
            "headroom_fraction": self.headroom_fraction(),
            "sustainable_per_s_by_level": rates,
            "planned_per_s_by_level": self.planned_per_s(),
            "target_per_s": TARGET_FRACTION * max(rates) if rates else None,
        }


def _averaged(old: list[float], new: Sequence[float]) -> list[float]:
    """`old` moved COST_ALPHA of the way to `new` (`new` itself when the number of levels
    changed); `old` when `new` has a cost that is not a positive number."""
    if not all(math.isfinite(c) and c > 0 for c in new):
        return old
    if len(old) != len(new):
        return list(new)
    return [o + COST_ALPHA * (n - o) for o, n in zip(old, new, strict=True)]
