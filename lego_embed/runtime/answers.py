"""Answers: every request the runtime accepts gets exactly one, a decision or a failure.

`AnswerLedger` is the one place where an answer is delivered. `Runtime.request()` opens an
entry; whatever ends a request (a finished decision, a subtask error, a worker fault, a request
overdue long after its deadline, stop(), a failed runtime) goes through `answer` or `fail`,
which delivers it to `poll()` and the request's callback only if the request is still open. A
second answer to the same request is dropped and counted (`duplicate_answers`, 0 unless there is
a bug), so features that end requests early can never answer twice.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from lego_embed.npc.decider import PreparedDecision

logger = logging.getLogger("lego_embed.runtime")


@dataclass(frozen=True)
class Decision:
    """One answered NPC request: a decision, or a failure saying why.

    action: the chosen action (None only when `error` says why, as "ErrorType: message").
    latency_ms: from `request()` to the answer. skip_level / skipped_layers: the level the request
    ended at and the layers it skipped. tokens: generated tokens. deadline_ms: the request's
    deadline (relative to the request); deadline_met: answered with an action within it.
    escalations: skip-level raises mid-request. compute_ms: measured subtask time.
    expected_accuracy: the level's measured accuracy (0..1) from the skip bundle, when known.
    """

    request_id: int
    npc_id: str
    action: str | None
    latency_ms: float
    skip_level: int
    skipped_layers: int
    tokens: int
    deadline_ms: float
    deadline_met: bool
    error: str | None
    escalations: int = 0
    compute_ms: float = 0.0
    expected_accuracy: float | None = None


@dataclass(frozen=True)
class PendingRequest:
    """A request accepted by `Runtime.request()`: who asks, what (validated and tokenized), when
    (`arrival_ns` on the runtime's clock), its deadline (ms after arrival) and its callback."""

    request_id: int
    npc_id: str
    prepared: PreparedDecision
    arrival_ns: int
    deadline_ms: float
    callback: Callable[[Decision], None] | None

    @property
    def deadline_ns(self) -> int:
        return self.arrival_ns + round(self.deadline_ms * 1e6)


def failure_reason(error: BaseException) -> str:
    """The "ErrorType: message" text a failed answer carries."""
    return f"{type(error).__name__}: {error}"


class AnswerLedger:
    """The open requests and every answer given (see the module docstring). Thread-safe: the
    game thread opens entries, the worker (or stop()) answers them."""

    def __init__(self) -> None:
        self._open: dict[int, PendingRequest] = {}
        self._lock = threading.Lock()
        self.answered: list[Decision] = []
        self.unpolled: deque[Decision] = deque()
        self.duplicate_answers = 0
        self.callback_errors = 0

    def open(self, request: PendingRequest) -> None:
        with self._lock:
            self._open[request.request_id] = request

    def is_open(self, request_id: int) -> bool:
        return request_id in self._open

    def pending(self) -> list[PendingRequest]:
        """The requests not answered yet, oldest first."""
        with self._lock:
            return sorted(self._open.values(), key=lambda r: r.request_id)

    def answer(self, decision: Decision) -> bool:
        """Delivers the answer of an open request (to poll() and its callback, which runs on the
        calling thread); False, and nothing delivered, if it was answered already."""
        with self._lock:
            request = self._open.pop(decision.request_id, None)
            if request is None:
                self.duplicate_answers += 1
                return False
            self.answered.append(decision)
            self.unpolled.append(decision)
        if request.callback is not None:
            try:
                request.callback(decision)
            except Exception:  # the game's callback failed: its bug, not a reason to stop
                self.callback_errors += 1
                if self.callback_errors == 1:
                    logger.exception(
                        "a decision callback raised (request %d, NPC %s); the decision is still "
                        "in poll(); later callback errors are only counted in stats()",
                        decision.request_id, decision.npc_id,
                    )
        return True

    def fail(self, request: PendingRequest, error: BaseException, now_ns: int) -> bool:
        """Answers an open request with a failure carrying `error` ("Type: message")."""
        return self.answer(
            Decision(
                request_id=request.request_id,
                npc_id=request.npc_id,
                action=None,
                latency_ms=max(now_ns - request.arrival_ns, 0) / 1e6,
                skip_level=0,
                skipped_layers=0,
                tokens=0,
                deadline_ms=request.deadline_ms,
                deadline_met=False,
                error=failure_reason(error),
            )
        )

    def take_unpolled(self) -> list[Decision]:
        """Answers given since the last call, oldest first."""
        taken = []
        while self.unpolled:
            taken.append(self.unpolled.popleft())
        return taken
