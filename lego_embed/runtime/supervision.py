"""Worker supervision: the worker's health and when a faulting worker may restart.

The runtime's worker catches every exception of one loop cycle, fails the requests in flight,
resets its state and carries on (a restart); `RestartBudget` decides whether a fault may be
restarted from or whether the worker has faulted too often and must stop (health `failed`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

NOT_STARTED = "not_started"
RUNNING = "running"
FAILED = "failed"
STOPPED = "stopped"


@dataclass(frozen=True)
class WorkerHealth:
    """The runtime worker's health, as `Runtime.health()` and `stats()["health"]` report it.

    state: not_started (start() not called yet), running, failed (faulted more than the restart
    budget allows and stopped: request() raises RuntimeFailedError) or stopped (stop() called).
    restarts: times the worker recovered from an internal error by resetting its state.
    last_error: "Type: message" of the latest internal error, None if there was none.
    """

    state: str
    restarts: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error}


class RestartBudget:
    """At most `max_restarts` restarts within any `window_ns` (ns on the runtime's clock)."""

    def __init__(self, max_restarts: int, window_ns: int) -> None:
        self.max_restarts = max_restarts
        self.window_ns = window_ns
        self._faults: deque[int] = deque()

    def allow(self, now_ns: int) -> bool:
        """Records a fault at now_ns; True if the worker may restart after it."""
        self._faults.append(now_ns)
        while self._faults and now_ns - self._faults[0] > self.window_ns:
            self._faults.popleft()
        return len(self._faults) <= self.max_restarts

    def clear(self) -> None:
        self._faults.clear()
