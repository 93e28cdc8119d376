"""Answers: every request the runtime accepts gets exactly one, a decision or a failure.

`AnswerLedger` is the one place where an answer is delivered. `Runtime.submit()` opens an
entry; whatever ends a request (a finished decision or line, a fallback, a newer request that
supersedes it, a subtask error, a worker fault, a request overdue long after its deadline,
stop(), a failed runtime) goes through `answer` or `fail`, which delivers it to `poll()` and the
request's callback only if the request is still open. A second answer to the same request is
dropped and counted (`duplicate_answers`, 0 unless there is a bug), so features that end
requests early can never answer twice. Streamed events (a ChoiceThenLine's action, line tokens)
are not answers: `notify` hands them to the game's callbacks while the request is open.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from lego_embed.npc.decider import PreparedRequest
from lego_embed.runtime.request import Request

logger = logging.getLogger("lego_embed.runtime")

DECIDED = "decided"
FALLBACK = "fallback"
SUPERSEDED = "superseded"
FAILED = "failed"
CORRECTION = "correction"
STATUSES = (DECIDED, FALLBACK, SUPERSEDED, FAILED, CORRECTION)


@dataclass(frozen=True)
class Decision:
    """One answered NPC request (a decision, a line, or both), or a failure saying why.

    action: the chosen action (Choice, ChoiceThenLine): the model's (status decided or
    correction) or the game's fallback (status fallback); None for a Line, when superseded, or
    failed with `error` saying why ("ErrorType: message"). line: what the NPC said (Line,
    ChoiceThenLine): the streamed texts joined; a failure that ends a line early (overdue,
    stopped, a worker fault) carries what was streamed, None if nothing was. latency_ms: from
    `submit()` to this delivery. skip_level / skipped_layers: the level the model's work ended
    at and the layers it skipped. tokens: generated tokens. deadline_ms: the request's reaction
    deadline (relative to the request); deadline_met: the model's action and first line token
    arrived within it (False for fallbacks, superseded and failed requests). escalations:
    skip-level raises mid-request. compute_ms: measured subtask time. expected_accuracy: the
    level's measured accuracy (0..1) from the skip bundle, when known (None for answers the
    model did not give). status: decided | fallback | superseded | failed | correction (see the
    module docstring). output: the output spec's kind (choice, line, choice_then_line).
    action_ms / first_token_ms: when the model's action / the first line token were known (ms
    from the request). line_tokens: tokens of the line; late_tokens: line tokens made after
    their own deadline (the first at deadline_ms, then one per 1/pace). warnings: problems found
    when the request was built that did not stop it (unused fields, an unknown persona).
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
    status: str = DECIDED
    output: str = "choice"
    line: str | None = None
    action_ms: float | None = None
    first_token_ms: float | None = None
    line_tokens: int = 0
    late_tokens: int = 0
    warnings: tuple[str, ...] = ()


@dataclass
class RequestProgress:
    """What the worker has made of an open request so far (clock ns): when its action and
    first line token were known, line tokens streamed and how many of them late, characters of
    the line shown, whether it prefills a static prompt part the others wait for, and its
    predicted compute at each level when it was admitted (ns, for back-pressure)."""

    action_ns: int | None = None
    first_token_ns: int | None = None
    line_tokens: int = 0
    late_tokens: int = 0
    shown_chars: int = 0
    static_owner: bool = False
    planned_cost_ns: tuple[float, ...] = ()


@dataclass(frozen=True)
class PendingRequest:
    """A request accepted by `Runtime.submit()`: the game's `Request` (who asks, the output spec,
    deadline, callbacks, supersede / fallback / corrections), its prompt encoded and its sampler
    (`prepared`), when it arrived (`arrival_ns` on the runtime's clock) and its progress."""

    request_id: int
    request: Request
    prepared: PreparedRequest
    arrival_ns: int
    progress: RequestProgress = field(default_factory=RequestProgress)

    @property
    def npc_id(self) -> str:
        return self.request.npc_id

    @property
    def deadline_ms(self) -> float:
        return self.request.deadline_ms

    @property
    def deadline_ns(self) -> int:
        return self.arrival_ns + round(self.deadline_ms * 1e6)

    @property
    def callback(self) -> Callable[[Decision], None] | None:
        return self.request.callback

    @property
    def supersede(self) -> bool:
        return self.request.supersede

    @property
    def fallback(self) -> Any:
        return self.request.fallback

    @property
    def corrections(self) -> bool:
        return self.request.corrections

    def since_arrival_ms(self, t_ns: int | None) -> float | None:
        return None if t_ns is None else max(t_ns - self.arrival_ns, 0) / 1e6

    def streamed_line(self) -> str | None:
        """The line's text streamed so far (None before its first token)."""
        text = self.prepared.sampler.text
        return text.released if text is not None and self.progress.line_tokens else None


def failure_reason(error: BaseException) -> str:
    """The "ErrorType: message" text a failed answer carries."""
    return f"{type(error).__name__}: {error}"


class AnswerLedger:
    """The open requests and every answer given (see the module docstring). Thread-safe: the
    game thread opens entries, the worker (or stop()) answers them."""

    def __init__(self) -> None:
        self._open: dict[int, PendingRequest] = {}
        self._lock = threading.Condition()  # notified when an answer becomes pollable
        self.answered: list[Decision] = []
        self.unpolled: deque[Decision] = deque()
        self.duplicate_answers = 0
        self.callback_errors = 0
        self.corrections = 0
        self._awaiting_correction: dict[int, PendingRequest] = {}

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
            self._lock.notify_all()
            if decision.status == FALLBACK and request.corrections:
                self._awaiting_correction[request.request_id] = request
        self._call_back(request, decision)
        return True

    def awaits_correction(self, request_id: int) -> bool:
        """The request was answered with a fallback and wants the model's late action."""
        return request_id in self._awaiting_correction

    def correct(self, decision: Decision) -> bool:
        """Delivers the model's late action after a fallback (status correction), once, and only
        to a request that asked for it; False (nothing delivered) otherwise."""
        with self._lock:
            request = self._awaiting_correction.pop(decision.request_id, None)
            if request is None:
                return False
            decision = replace(decision, status=CORRECTION)
            self.corrections += 1
            self.unpolled.append(decision)
            self._lock.notify_all()
        self._call_back(request, decision)
        return True

    def drop_correction(self, request_id: int) -> None:
        """The late action of this request will not come (superseded, overdue, worker reset)."""
        with self._lock:
            self._awaiting_correction.pop(request_id, None)

    def drop_corrections(self) -> None:
        """No late action will come for any request (the worker's state was reset)."""
        with self._lock:
            self._awaiting_correction.clear()

    def _call_back(self, request: PendingRequest, decision: Decision) -> None:
        if request.callback is None:
            return
        try:
            request.callback(decision)
        except Exception:  # the game's callback failed: its bug, not a reason to stop
            self._callback_failed(decision.request_id, decision.npc_id)

    def _callback_failed(self, request_id: int, npc_id: str) -> None:
        self.callback_errors += 1
        if self.callback_errors == 1:
            logger.exception(
                "a callback of the game raised (request %d, NPC %s); answers are still in "
                "poll(); later callback errors are only counted in stats()", request_id, npc_id,
            )

    def notify(self, request: PendingRequest, callback: Callable[[Any], None] | None,
               event: Any) -> None:
        """Hands a streamed event (ActionEvent, TokenEvent) to the game's callback while the
        request is open; a callback that raises is counted like an answer callback."""
        if callback is None or not self.is_open(request.request_id):
            return
        try:
            callback(event)
        except Exception:  # the game's callback failed: its bug, not a reason to stop
            self._callback_failed(request.request_id, request.npc_id)

    def fail(self, request: PendingRequest, error: BaseException, now_ns: int) -> bool:
        """Answers an open request with a failure carrying `error` ("Type: message"); a line
        that had begun keeps what was streamed (`Decision.line`)."""
        return self._answer_early(request, FAILED, None, failure_reason(error), now_ns)

    def answer_without_model(
        self, request: PendingRequest, status: str, action: str | None, now_ns: int
    ) -> bool:
        """Answers an open request with something other than the model's work: its fallback
        action (status fallback) or nothing (status superseded)."""
        return self._answer_early(request, status, action, None, now_ns)

    def _answer_early(self, request: PendingRequest, status: str, action: str | None,
                      error: str | None, now_ns: int) -> bool:
        progress = request.progress
        streamed = request.streamed_line()
        return self.answer(
            Decision(
                request_id=request.request_id,
                npc_id=request.npc_id,
                action=action,
                latency_ms=max(now_ns - request.arrival_ns, 0) / 1e6,
                skip_level=0,
                skipped_layers=0,
                tokens=0,
                deadline_ms=request.deadline_ms,
                deadline_met=False,
                error=error,
                status=status,
                output=request.request.output.kind,
                line=streamed,
                first_token_ms=(request.since_arrival_ms(progress.first_token_ns)
                                if streamed is not None else None),
                line_tokens=progress.line_tokens if streamed is not None else 0,
                late_tokens=progress.late_tokens if streamed is not None else 0,
                warnings=request.request.warnings,
            )
        )

    def pending_request(self, request_id: int) -> PendingRequest | None:
        """The open request with this id, or None once it was answered."""
        with self._lock:
            return self._open.get(request_id)

    def take_unpolled(self, timeout_s: float = 0.0) -> list[Decision]:
        """Answers given since the last call, oldest first; with none yet, waits up to
        timeout_s (s) for the first."""
        with self._lock:
            if timeout_s > 0:
                self._lock.wait_for(lambda: self.unpolled, timeout_s)
            taken = list(self.unpolled)
            self.unpolled.clear()
        return taken
