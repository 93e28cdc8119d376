"""Where the runtime reads the time: the one clock it compares with engine event timestamps.

A real game uses `MonotonicClock` (`time.monotonic_ns()`, the time base engine events are
stamped with). `ManualClock` moves only when told to: with `Runtime.start(thread=False)` and
`Runtime.run_until_idle()` it makes a replay deterministic, so tests decide outcomes by the
timestamps they send rather than by how fast the machine happens to be.
"""

from __future__ import annotations

import time
from typing import Protocol

from lego_embed.errors import RuntimeConfigError


class Clock(Protocol):
    """A monotonic time source in nanoseconds, on the same time base as `EngineEvent.t_ns`."""

    def now_ns(self) -> int: ...


class MonotonicClock:
    """The system's monotonic clock (`time.monotonic_ns()`, ns): the default."""

    def now_ns(self) -> int:
        return time.monotonic_ns()


class ManualClock:
    """A clock that stands still until `set` or `advance` moves it (ns, never backwards)."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now_ns = int(start_ns)

    def now_ns(self) -> int:
        return self._now_ns

    def set(self, t_ns: int) -> None:
        """Moves the clock to t_ns; raises RuntimeConfigError if that is in the past."""
        if t_ns < self._now_ns:
            raise RuntimeConfigError(
                f"a ManualClock never goes backwards: it is at {self._now_ns} ns, asked {t_ns} ns"
            )
        self._now_ns = int(t_ns)

    def advance(self, ns: int) -> None:
        """Moves the clock forward by ns (>= 0)."""
        self.set(self._now_ns + ns)
