"""The Runtime: the game-facing API that runs NPC requests in the renderer's idle gaps.

Requests are task-neutral (`runtime.request.Request`: a two-part prompt, an output spec, a
reaction deadline and, for lines, a reading pace). The static part of a prompt is prefilled
once with the full model and its KV kept, so every later request with the same static text
(any NPC's) prefills only its dynamic part. Line tokens are streamed to `on_token` as they are
made, each with its own deadline (the scheduler treats every next token as a deadline of its
own and escalates the skip level when one would be late).

Threading model. The game (or an engine bridge) calls `on_event`, `submit`, `poll`, `health`
and `stats` from its own threads; none of them runs inference or waits for it. One background
worker thread, started by `start()`, owns the executor, the scheduler, the headroom tracker and
the predictor: it drains the engine events, admits new requests (choosing their skip level),
asks the scheduler what may run now and runs one subtask (or one batched subtask of several
requests) at a time, so it can stop at any subtask boundary when a gap closes. Every answer goes
through the `AnswerLedger` (exactly one per request) to a queue that `poll()` empties and, if
given, to the request's callback, which runs on the worker thread (keep it short; hand the
result to the game thread). On CUDA the subtasks run on the executor's low-priority stream,
which orders them behind other CUDA work of this process only: a renderer in another context
(Vulkan, D3D, OpenGL) is time-sliced with ours by the driver, so the gap schedule is what keeps
its frames on time.

Supervision. Each cycle of the worker loop runs under one exception handler: an internal error
fails the requests in flight (`WorkerFaultError`), is logged once with its traceback and counted,
and the worker carries on with its scheduler, tracker, predictor and prefix cache reset (a
restart). More than `max_worker_restarts` restarts within `restart_window_s` stop the worker for
good (health `failed`): every open request is failed and `submit()` raises `RuntimeFailedError`.
A request still unanswered long after its deadline (for a line: its next token's) is failed
with `RequestOverdueError`.

When the work does not fit: a new request of an NPC supersedes its older open one that has
delivered nothing yet (answered `superseded` at once; the older one's prompt KV is reused where
the prompts share a prefix; an action already delivered or a line already speaking goes on); a
request with a fallback gets it at its deadline when the model's action is not there, or when
the skip-level choice finds that no level can finish it in time (its compute is then given to
the others); a line has no fallback: late tokens are still streamed and counted, and a failure
that ends a line early leaves what was streamed standing (`runtime.request`); and `BackPressure`
tells the game (`poll_overload()`, `stats()["backpressure"]`) when it asks for more decisions
per second than the headroom sustains.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lego_embed.errors import (
    InvalidEngineEventError,
    RequestOverdueError,
    RuntimeConfigError,
    RuntimeFailedError,
    RuntimeStoppedError,
    WorkerFaultError,
)
from lego_embed.model.executor import Executor, GreedySampler
from lego_embed.model.kv_cache import PrefixCache
from lego_embed.model.layer_plan import LayerPlan
from lego_embed.model.loading import LoadedModel
from lego_embed.model.profile import CostProfile
from lego_embed.model.timing import DeviceTimer
from lego_embed.npc.answer import FreeChoiceSampler, make_sampler, read_answer
from lego_embed.npc.chat_template import ChatTemplate
from lego_embed.npc.decider import PreparedRequest
from lego_embed.npc.output_spec import Choice, Line
from lego_embed.npc.prompt_parts import encode_prompt
from lego_embed.runtime.answers import (
    DECIDED,
    FALLBACK,
    SUPERSEDED,
    AnswerLedger,
    Decision,
    PendingRequest,
    failure_reason,
)
from lego_embed.runtime.answers import FAILED as FAILED_ANSWER
from lego_embed.runtime.backpressure import BackPressure, OverloadEvent
from lego_embed.runtime.clock import Clock, MonotonicClock
from lego_embed.runtime.doorbell import Doorbell
from lego_embed.runtime.events import PASS_BEGIN, EngineEvent, EngineEventSource, measured_on_gpu
from lego_embed.runtime.fallback import (
    DEADLINE_PASSED,
    PREDICTED_MISS,
    FallbackContext,
    FallbackSchedule,
    resolve_fallback,
)
from lego_embed.runtime.gpu_stats import nvml_stats
from lego_embed.runtime.headroom import HeadroomTracker, OpenGap, WindowHeadroom
from lego_embed.runtime.level_floor import LOWER_AT, OutcomeFloor
from lego_embed.runtime.predictor import HeadroomPredictor, WindowPredictor
from lego_embed.runtime.request import ActionEvent, Request, TokenEvent
from lego_embed.runtime.scheduler import (
    POLICIES,
    SPLIT_PARTS,
    CostModel,
    Dispatch,
    LevelOption,
    ScheduledRequest,
    Scheduler,
    SchedulerConfig,
)
from lego_embed.runtime.supervision import (
    FAILED,
    NOT_STARTED,
    RUNNING,
    STOPPED,
    RestartBudget,
    WorkerHealth,
)
from lego_embed.runtime.thread_priority import yield_to_engine_threads

logger = logging.getLogger("lego_embed.runtime")

FREE_TEXT_TOKENS = 16
WARMUP_DECODE_TOKENS = 3
LEVEL_FLOOR_SOURCES = ("rate", "outcomes")  # what sets the window's level floor
SILENCE_CHECK_SLACK_NS = 1_000_000  # wake just after the engine-silence threshold, not before
MAX_WAIT_NS = 500_000_000  # the idle worker re-checks silence and overdue requests this often
ADMISSION_ALPHA = 0.2  # weight of the newest admission's duration in its moving average
OVERDUE_CHECK_NS = 10_000_000  # overdue requests are looked for at most every 10 ms
WAKE_LAGS_KEPT = 4096  # the newest wake-up lags kept for stats()


@dataclass
class RuntimeConfig:
    """Runtime settings.

    policy: lego | free | inter_frame | static_skip (see scheduler). frame_budget_ms: the
    engine's frame period (60 FPS: 16.67). window_ms: execution window for headroom totals
    (one SLO period). margin_us / margin_fraction: dispatch margin. usable_fraction: share of
    predicted headroom the level choice relies on. edf / batching / prefix_reuse: the
    beyond-LEGO features (earliest deadline first, batched same-level subtasks: decode steps
    and equal-length prefills, static prompt part KV reuse). static_level / static_slice_ms: the
    static_skip policy. cpu_core: pin the worker thread to this core (CPU runs).
    record_timeline: keep (start_ns, end_ns, kind, batch) of every subtask in `Runtime.timeline`
    and (t_ns, queued requests) at every change of the queue in `Runtime.backlog_timeline`.
    warmup: measure the cost profile at start() (one request per level, and batches of
    2..max_batch requests when batching).
    constrained: decode with the action trie (default); False generates up to 16 free tokens
    (LEGO's shape) and accepts a Choice's answer only if its text is an allowed action (lines
    are always decoded by their output spec). cost_profile:
    a `lego-embed profile` JSON that seeds the cost model (the warm-up and every measured
    subtask then correct it). prefix_min_tokens: keep a static prompt part only if it is at
    least this long (a short prefix saves almost nothing, and attending over cached positions
    needs a mask, which made the bundled model's attention block 60% slower on CPU).
    cost_deviations / gap_deviations: how conservative predictions
    are (subtask cost: mean + k deviations; gap length: mean - k deviations).
    max_worker_restarts / restart_window_s: the worker recovers from an internal error by
    resetting its state; more than max_worker_restarts such restarts within restart_window_s
    seconds stop it (health `failed`). overdue_limit_ms: a request with no answer
    max(overdue_limit_ms, its own deadline) after its deadline is failed (RequestOverdueError).
    prefill_chunk_tokens: prefill prompts in chunks of at most this many tokens (None: whole);
    a superseded request's finished chunks are what its successor can reuse. split_ffn: when the
    next FFN block does not fit the rest of a gap, run a slice of its intermediate dimension
    that does (1/2 or 1/4; exact, see Executor.split_next). whole_batches: while demand is
    above what the full model can serve (back-pressure's measure), a batch of requests at the
    same point of a pass runs whole or waits, and waiting requests whose prompts would batch
    share one level (`lego`; see the scheduler). borrow_frame_slack: while demand is above
    that, `lego` lets work in an inter-frame gap run on into the next frame by as much as that
    frame can start late and still end by its vsync (off by default; see the scheduler).
    warmup_prompt_tokens: length of the warm-up prompt (tokens). chat_template: apply the model
    folder's chat template to prompts when it has one. max_static_prefixes: static prompt
    parts whose KV is kept (least recently used dropped first). worker_yields: run the worker
    thread under SCHED_BATCH (Linux; `thread_priority`), so that waking it never preempts a
    running game thread; it then waits for a free core or the scheduler's tick, and a game that
    keeps every core busy leaves it few gaps (off by default). window_level_floor: `lego`
    takes no level below the smallest whose sustainable rate (back-pressure's) covers the
    demand, set once per execution window (see `BackPressure.sustaining_level`; on by
    default: side by side it raised SLO attainment in 60 of the 92 paired runs that differed,
    at about 0.025 lower expected accuracy, docs/BENCHMARKS.md). level_floor_from: what sets
    that floor: "rate" (back-pressure's sustainable rate, the default) or "outcomes"
    (`level_floor.OutcomeFloor`: one level up after a window with an answer late or near its
    deadline, one down after calm windows; on the simulated device it kept SLO 1.00 at the
    accuracy of no floor, where the rate's floor lost up to 0.126; on the CPU VM it tied with
    the rate, docs/BENCHMARKS.md 2026-11-30 16:00). admission_in_gap_tail: with work queued,
    `lego` admits a request that arrived meanwhile in an inter-frame gap's tail, where no
    subtask fits, rather than before the gap's first subtask (on by default; see
    `Runtime._defers_admission`).
    """

    policy: str = "lego"
    frame_budget_ms: float = 1000.0 / 60.0
    window_ms: float = 300.0
    margin_us: float = 150.0
    margin_fraction: float = 0.1
    usable_fraction: float = 0.6
    edf: bool = True
    batching: bool = True
    prefix_reuse: bool = True
    prefix_min_tokens: int = 16
    static_level: int | None = None
    static_slice_ms: float = 4.0
    cpu_core: int | None = None
    record_timeline: bool = False
    warmup: bool = True
    constrained: bool = True
    cost_profile: str | None = None
    cost_deviations: float = 2.0
    gap_deviations: float = 2.0
    max_worker_restarts: int = 5
    restart_window_s: float = 60.0
    overdue_limit_ms: float = 5000.0
    prefill_chunk_tokens: int | None = None
    split_ffn: bool = True
    whole_batches: bool = True
    borrow_frame_slack: bool = False
    warmup_prompt_tokens: int = 32
    chat_template: bool = True
    max_static_prefixes: int = 64
    worker_yields: bool = False
    window_level_floor: bool = True
    level_floor_from: str = "rate"
    admission_in_gap_tail: bool = True

    def validate(self) -> RuntimeConfig:
        if self.policy not in POLICIES:
            raise RuntimeConfigError(
                f"policy {self.policy!r} is not one of {', '.join(POLICIES)}"
            )
        for name in ("frame_budget_ms", "window_ms", "static_slice_ms", "restart_window_s",
                     "overdue_limit_ms"):  # the runtime counts these in whole ns
            if not _finite_number(getattr(self, name)) or not getattr(self, name) >= 1e-6:
                raise RuntimeConfigError(
                    f"{name} must be a finite number >= 1e-6, got {getattr(self, name)!r}"
                )
        for name in ("margin_us", "margin_fraction", "cost_deviations", "gap_deviations"):
            if not _finite_number(getattr(self, name)) or getattr(self, name) < 0:
                raise RuntimeConfigError(
                    f"{name} must be a finite number >= 0, got {getattr(self, name)!r}"
                )
        if not _finite_number(self.usable_fraction) or not 0 < self.usable_fraction <= 1:
            raise RuntimeConfigError(
                f"usable_fraction must be in (0, 1], got {self.usable_fraction!r}"
            )
        if not isinstance(self.max_worker_restarts, int) or self.max_worker_restarts < 0:
            raise RuntimeConfigError(
                f"max_worker_restarts must be an int >= 0, got {self.max_worker_restarts!r}"
            )
        for name in ("warmup_prompt_tokens", "max_static_prefixes"):
            if (isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int)
                    or getattr(self, name) < 1):
                raise RuntimeConfigError(f"{name} must be a whole number >= 1, got "
                                         f"{getattr(self, name)!r}")
        if self.prefill_chunk_tokens is not None and (
            not isinstance(self.prefill_chunk_tokens, int) or self.prefill_chunk_tokens < 1
        ):
            raise RuntimeConfigError(
                f"prefill_chunk_tokens must be an int >= 1 or None, got "
                f"{self.prefill_chunk_tokens!r}"
            )
        if self.level_floor_from not in LEVEL_FLOOR_SOURCES:
            raise RuntimeConfigError(
                f"level_floor_from must be one of {', '.join(LEVEL_FLOOR_SOURCES)}, got "
                f"{self.level_floor_from!r}"
            )
        if self.cpu_core is not None and self.cpu_core not in os.sched_getaffinity(0):
            raise RuntimeConfigError(
                f"cpu_core {self.cpu_core} is not available; pick one of "
                f"{sorted(os.sched_getaffinity(0))}"
            )
        return self


def _finite_number(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real) and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _percentiles_us(values_ns: Sequence[int]) -> dict[str, Any]:
    """p50 / p99 / max in us of a list of durations in ns (None when empty), and its length."""
    if not values_ns:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    values = np.asarray(values_ns, dtype=np.float64) / 1e3
    return {"n": len(values), "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)), "max": float(values.max())}


def _finite_or_none(value: float | None) -> float | None:
    """A measured quantity for stats(): None rather than NaN or infinity."""
    return float(value) if value is not None and math.isfinite(value) else None


class Runtime:
    """Schedules NPC requests into rendering headroom (see the module docstring).

    `bundle` is a SkipBundle (lego_embed.skip) or None (level 0 only). `accuracy_by_level`
    overrides the expected accuracy per level (e.g. from docs/benchmarks/skip_accuracy.json).
    `clock` is where the runtime reads the time (default: `time.monotonic_ns()`); a
    `ManualClock` with `start(thread=False)` and `run_until_idle()` replays deterministically.
    `predictor` makes the headroom predictor (default `HeadroomPredictor`; the benchmark's
    oracle knows the replayed trace's future). `timer` runs and times each subtask (default:
    measured on the model's device; the benchmark's simulated device charges modelled costs
    on a ManualClock, `bench.simulated`).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        bundle: Any = None,
        config: RuntimeConfig | None = None,
        accuracy_by_level: Mapping[int, float] | None = None,
        clock: Clock | None = None,
        predictor: Callable[[], WindowPredictor] | None = None,
        timer: DeviceTimer | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = (config or RuntimeConfig()).validate()
        self.clock = clock or MonotonicClock()
        self._make_predictor = predictor or HeadroomPredictor
        self.chat_template = (
            ChatTemplate.from_folder(loaded.path, loaded.tokenizer.special_tokens)
            if self.config.chat_template else None
        )
        self.executor = Executor(loaded, self.config.prefill_chunk_tokens, timer)
        self.levels = self._levels(loaded, bundle, accuracy_by_level or {})
        cfg = self.config
        self._scheduler_config = SchedulerConfig(
            policy=cfg.policy,
            margin_ns=round(cfg.margin_us * 1000),
            margin_fraction=cfg.margin_fraction,
            usable_fraction=cfg.usable_fraction,
            edf=cfg.edf,
            batching=cfg.batching,
            static_level=cfg.static_level,
            static_slice_ns=round(cfg.static_slice_ms * 1e6),
            split_ffn=cfg.split_ffn,
            whole_batches=cfg.whole_batches,
            borrow_frame_slack=cfg.borrow_frame_slack,
        )
        self._start_costs = (
            CostModel.from_profile(CostProfile.load(cfg.cost_profile), cfg.cost_deviations)
            if cfg.cost_profile else CostModel(deviations=cfg.cost_deviations)
        )
        # GPU-measured passes arrive a frame or more late: they get their own tracker (the GPU's
        # idle gaps and headroom per window) and never drive live dispatch.
        self.gpu_tracker = HeadroomTracker(cfg.frame_budget_ms, cfg.window_ms)
        self.timeline: list[tuple[int, int, str, int]] = []
        self.backlog_timeline: list[tuple[int, int]] = []
        self._events: deque[EngineEvent] = deque()
        self._gpu_events: deque[EngineEvent] = deque()
        self._incoming: deque[PendingRequest] = deque()
        # seen by the worker (fallback armed), admitted in the first gap with room for it
        self._arrived: deque[PendingRequest] = deque()
        self._accept_lock = threading.Lock()
        self._ledger = AnswerLedger()
        self._wake = Doorbell()
        self._event_source: EngineEventSource | None = None
        # ns from each gap-opening event's timestamp until the worker, woken, applied it
        self._wake_lags_ns: deque[int] = deque(maxlen=WAKE_LAGS_KEPT)
        self._slept = False  # the worker's last sleep could be ended by a gap-opening event
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._warmed_up = False
        self._last_event_ns: int | None = None
        self._health = WorkerHealth(NOT_STARTED)
        self._failure: RuntimeFailedError | None = None
        self._restart_budget = RestartBudget(
            cfg.max_worker_restarts, round(cfg.restart_window_s * 1e9)
        )
        self._next_overdue_check_ns = 0
        self._next_wake_ns: int | None = None
        self.backpressure = BackPressure(cfg.window_ms)
        self._backpressure_state: dict[str, Any] = self.backpressure.snapshot(0)
        self._overload_events: deque[OverloadEvent] = deque()
        self._counters = {
            "subtasks": 0, "batched_subtasks": 0, "prefix_hits": 0, "escalations": 0,
            "llm_busy_ns": 0, "errors": 0, "contended_subtasks": 0, "relevels": 0,
            "worker_faults": 0, "overdue_requests": 0, "superseded": 0,
            "superseded_tokens_reused": 0, "fallbacks": 0, "fallbacks_predicted": 0,
            "fallback_errors": 0, "ffn_splits": 0, "overload_events": 0,
            "static_prefills": 0, "line_tokens": 0, "late_tokens": 0, "token_level_changes": 0,
        }
        self._reset_worker_state()

    @staticmethod
    def _levels(
        loaded: LoadedModel, bundle: Any, accuracy_by_level: Mapping[int, float]
    ) -> list[LevelOption]:
        full_accuracy = None if bundle is None else bundle.full_model.get("accuracy")
        levels = [LevelOption(0, LayerPlan.full(loaded.num_layers),
                              accuracy_by_level.get(0, full_accuracy))]
        if bundle is not None:
            bundle.check_model(loaded)
            for level in bundle.levels:
                accuracy = accuracy_by_level.get(level.level, level.accuracy)
                levels.append(LevelOption(level.level, bundle.plan(level.level), accuracy))
        return levels

    def _reset_worker_state(self) -> None:
        """Everything the worker learns while it runs, as at start(): the scheduler (empty queue,
        the cost model as measured by the warm-up), the headroom tracker and predictor, the
        static prompt parts kept. The executor is kept: a request's executor state lives in
        its request."""
        self.scheduler = Scheduler(
            self.executor, self.levels, self._scheduler_config, self._start_costs.copy()
        )
        self.predictor = self._make_predictor()
        self._fallbacks = FallbackSchedule()
        self._predicted_misses: set[int] = set()
        self._ledger.drop_corrections()
        self.tracker = HeadroomTracker(
            self.config.frame_budget_ms, self.config.window_ms, on_window=self._window,
            gap_deviations=self.config.gap_deviations,
        )
        self._prefixes: OrderedDict[tuple[int, ...], PrefixCache] = OrderedDict()
        self._salvaged: dict[int, PrefixCache] = {}  # superseded KV, by the new request's id
        self._admission_ns = 0.0  # one admission's measured duration (moving average)
        self._admission_deferred_in: OpenGap | None = None  # see _defers_admission
        self._static_in_flight: set[tuple[int, ...]] = set()
        self._window_busy_ns = 0
        self._window_backlogged = False
        self._outcome_floor = OutcomeFloor(len(self.levels) - 1)

    # ------------------------------------------------------------------ game-facing API
    def start(self, thread: bool = True) -> None:
        """Measures the cost profile (one warm-up run per level, if enabled; once) and starts
        the worker. Call it at load time, before frames are reported. With thread=False no
        thread starts: the caller drives the worker with `run_until_idle()` (deterministic
        replays with a ManualClock, tests). After stop() or a failure it starts afresh."""
        if self._health.state == RUNNING:
            return
        if self.config.warmup and not self._warmed_up:
            self._warmup()
            self._warmed_up = True
            self._start_costs = self.scheduler.cost.copy()
        if self._health.state != NOT_STARTED:
            self._reset_worker_state()
        self._restart_budget.clear()
        self._failure = None
        self._stopping.clear()
        self._health = replace(self._health, state=RUNNING)
        if thread:
            self._thread = threading.Thread(
                target=self._work, name="lego-embed-runtime", daemon=True
            )
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops the worker after its current subtask. Requests not answered yet are answered
        with RuntimeStoppedError (on the calling thread); later requests raise it."""
        self._stopping.set()
        self._wake.ring()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._health.state != FAILED:
            self._health = replace(self._health, state=STOPPED)
        self._fail_open(RuntimeStoppedError(
            "the runtime was stopped before this request was answered"
        ))

    def on_event(self, event: EngineEvent) -> None:
        """Reports a rendering event; O(1), never blocks on inference. Only events that can
        open a gap wake the worker: a pass_begin closes one, and the worker sees it between
        subtasks without being woken, so it never takes the device from a starting pass.
        Events measured on the GPU (`measured_on_gpu`) only feed `gpu_tracker`."""
        if not isinstance(event, EngineEvent):
            raise InvalidEngineEventError(
                f"on_event takes an EngineEvent(kind, name, t_ns), got {event!r}"
            )
        self._accept_events((event,))
        if event.kind != PASS_BEGIN and not measured_on_gpu(event):
            self._wake.ring()

    def attach_events(self, source: EngineEventSource) -> None:
        """Lets the worker read the engine's events itself from `source` (for example an
        `engines.event_ring.EventRingReader` a render process writes to), instead of
        `on_event` calls from a game thread: a gap-opening event then wakes the worker
        directly, one OS wake-up where `on_event` needs the game thread's wake-up first. The
        worker reads it between subtasks (a memory read) and drops it once it is closed;
        `on_event` still works beside it."""
        self._event_source = source
        self._wake.ring()

    def _accept_events(self, events: Sequence[EngineEvent]) -> None:
        """Queues events for the worker: GPU-measured ones for `gpu_tracker` only (late, they
        are no sign of the engine's life), the others for the live tracker."""
        live = [e for e in events if not measured_on_gpu(e)]
        self._gpu_events.extend(e for e in events if measured_on_gpu(e))
        if live:
            self._events.extend(live)
            self._last_event_ns = self.clock.now_ns()

    def _events_waiting(self) -> bool:
        """Whether engine events came that the worker has not applied: reads the attached
        source first (a pass that began during a subtask must be seen before the next one)."""
        source = self._event_source
        if source is not None:
            events = source.read_events()
            if events:
                self._accept_events(events)
            if source.closed:
                self._event_source = None
        return bool(self._events)

    def submit(self, request: Request) -> int:
        """Queues a request and returns its id; it gets exactly one answer (see
        `Decision.status`: decided, fallback, superseded, failed with its reason, and after a
        fallback a correction if asked for) through poll() and its callback; a line streams its
        tokens to `on_token` before that. Encodes the prompt (with the model's chat template
        when it has one) and builds the output spec's sampler now, so a bad request raises its
        typed error here (InvalidActionSetError, PromptTooLongError, ...); raises
        RuntimeFailedError or RuntimeStoppedError at once when the worker cannot answer. Never
        waits for inference. Superseding, fallbacks and corrections are the request's fields
        (`runtime.request`)."""
        self._check_worker()
        self._refuse_if_not_answering()
        if not isinstance(request, Request):
            raise RuntimeConfigError(
                f"submit takes a lego_embed.runtime.request.Request, got {type(request).__name__}"
            )
        tokenizer = self.loaded.tokenizer
        encoded = encode_prompt(tokenizer, request.prompt, self.chat_template)
        sampler = make_sampler(tokenizer, request.output)  # also checks the action set
        if not self.config.constrained and isinstance(request.output, Choice):
            # LEGO's shape: free tokens, accepted only if they spell an allowed action
            sampler = FreeChoiceSampler(tokenizer, request.output, FREE_TEXT_TOKENS)
        self.executor.check_prompt(encoded.ids, sampler)
        arrival_ns = self.clock.now_ns()
        with self._accept_lock:
            pending = PendingRequest(
                next(self._ids), request, PreparedRequest(encoded, sampler), arrival_ns
            )
            self._ledger.open(pending)
            self._incoming.append(pending)
        self._wake.ring()
        if self._health.state in (FAILED, STOPPED):  # the worker gave up meanwhile
            self._fail_open(self._failure or RuntimeStoppedError("the runtime was stopped"))
        return pending.request_id

    def poll(self, timeout_s: float = 0.0) -> list[Decision]:
        """Answers given since the last poll, oldest first (every status, corrections too).
        A game polls with the default 0 (never waits); a tool or test may pass timeout_s (s) to
        wait for the first answer instead of sleeping between polls."""
        self._check_worker()
        return self._ledger.take_unpolled(timeout_s)

    def poll_overload(self) -> list[OverloadEvent]:
        """Changes of the load state since the last call, oldest first: `overloaded=True` when
        the game asks for more decisions per second than the headroom sustains (come down to
        `target_per_s`), `overloaded=False` when it recovered."""
        events = []
        while self._overload_events:
            events.append(self._overload_events.popleft())
        return events

    def next_wake_ns(self) -> int | None:
        """When the idle worker wants to run again without being woken (a fallback deadline,
        an engine-silence or overdue check), on the runtime's clock; None while it has work.
        Engines that drive the worker with run_until_idle() move their clock there."""
        return self._next_wake_ns

    def health(self) -> WorkerHealth:
        """The worker's state, restarts and last internal error (see WorkerHealth)."""
        self._check_worker()
        return self._health

    def stats(self) -> dict[str, Any]:
        """Health, counters, latencies, line figures, headroom estimates, the cost profile and
        GPU stats (NVML). Every number is finite (None where nothing was measured). `decisions`
        counts every answer but superseded ones; latencies and line figures are of the answers
        the model gave (status decided)."""
        health = self.health()
        decisions = [d for d in self._ledger.answered if d.status != SUPERSEDED]
        by_model = [d for d in decisions if d.status == DECIDED]
        latencies = [d.latency_ms for d in by_model]
        lines = [d for d in by_model if d.line is not None]
        first_tokens = [d.first_token_ms for d in lines if d.first_token_ms is not None]
        predicted = self.predictor.predict()
        windows = self.tracker.windows
        last_window = windows[-1] if windows else None
        slots = dict(self.tracker.slots)
        return {
            "policy": self.config.policy,
            "health": health.as_dict(),
            "levels": [
                {"level": o.level, "skipped_layers": o.skipped_layers, "accuracy": o.accuracy}
                for o in self.levels
            ],
            "decisions": len(decisions),
            "failed_requests": sum(d.error is not None for d in decisions),
            "superseded": self._counters["superseded"],
            "superseded_tokens_reused": self._counters["superseded_tokens_reused"],
            "fallbacks": self._counters["fallbacks"],
            "fallbacks_predicted": self._counters["fallbacks_predicted"],
            "fallback_errors": self._counters["fallback_errors"],
            "corrections": self._ledger.corrections,
            "ffn_splits": self._counters["ffn_splits"],
            "overload_events": self._counters["overload_events"],
            "backpressure": dict(self._backpressure_state),
            "level_floor": self.scheduler.level_floor,
            "open_requests": len(self._ledger.pending()),
            "slo_attainment": (
                sum(d.deadline_met for d in decisions) / len(decisions) if decisions else None
            ),
            "p50_latency_ms": float(np.percentile(latencies, 50)) if latencies else None,
            "p99_latency_ms": float(np.percentile(latencies, 99)) if latencies else None,
            "mean_skipped_layers": (
                float(np.mean([d.skipped_layers for d in decisions])) if decisions else None
            ),
            "queue_length": len(self.scheduler) + len(self._arrived) + len(self._incoming),
            "subtasks": self._counters["subtasks"],
            "batched_subtasks": self._counters["batched_subtasks"],
            "prefix_hits": self._counters["prefix_hits"],
            "escalations": self._counters["escalations"],
            "errors": self._counters["errors"],
            "worker_restarts": health.restarts,
            "worker_faults": self._counters["worker_faults"],
            "overdue_requests": self._counters["overdue_requests"],
            "callback_errors": self._ledger.callback_errors,
            "duplicate_answers": self._ledger.duplicate_answers,
            "contended_subtasks": self._counters["contended_subtasks"],
            "relevels": self._counters["relevels"],
            "lines": len(lines),
            "line_tokens": self._counters["line_tokens"],
            "late_tokens": self._counters["late_tokens"],
            "lines_missing_first_token_deadline": sum(
                d.first_token_ms is None or d.first_token_ms > d.deadline_ms for d in lines
            ),
            "p50_first_token_ms": float(np.percentile(first_tokens, 50)) if first_tokens else None,
            "p99_first_token_ms": float(np.percentile(first_tokens, 99)) if first_tokens else None,
            "static_prefills": self._counters["static_prefills"],
            "static_prefixes_kept": len(self._prefixes),
            "token_level_changes": self._counters["token_level_changes"],
            "llm_busy_ms": self._counters["llm_busy_ns"] / 1e6,
            "wake_lag_us": _percentiles_us(tuple(self._wake_lags_ns)),
            "frames_seen": self.tracker.frames,
            "windows": len(windows),
            "last_window_headroom_ms": (
                _finite_or_none(last_window.total_ms) if last_window else None
            ),
            "predicted_window_headroom_ms": _finite_or_none(predicted),
            "usable_fraction": _finite_or_none(self.scheduler.usable_fraction),
            "slot_estimates_ms": {k: _finite_or_none(v.mean_ms) for k, v in slots.items()},
            "gpu_frames_seen": self.gpu_tracker.frames,
            "gpu_window_headroom_ms": [
                _finite_or_none(w.total_ms) for w in self.gpu_tracker.windows[-10:]
            ],
            "gpu_slot_estimates_ms": {
                k: _finite_or_none(v.mean_ms) for k, v in self.gpu_tracker.slots.items()
            },
            "cost_profile_ns": {
                k: _finite_or_none(v) for k, v in self.scheduler.cost.profile_ns().items()
            },
            "gpu": nvml_stats(),
        }

    def run_until_idle(self, max_cycles: int = 1_000_000) -> int:
        """Runs the worker loop on the calling thread until nothing may run now (where the
        worker thread would sleep until the next event); returns the number of subtasks run.
        For engines that drive the runtime themselves after start(thread=False), typically with
        a ManualClock: deterministic replays and tests."""
        if self._thread is not None:
            raise RuntimeConfigError(
                "the worker thread is running; run_until_idle() is for start(thread=False)"
            )
        if self._health.state != RUNNING:
            raise RuntimeConfigError(
                f"the runtime is {self._health.state}; call start(thread=False) first"
            )
        before = self._counters["subtasks"]
        for _ in range(max_cycles):
            if self._cycle() is not None or self._health.state != RUNNING:
                break
        return self._counters["subtasks"] - before

    # ------------------------------------------------------------------ supervision
    def _refuse_if_not_answering(self) -> None:
        if self._health.state == FAILED:
            raise RuntimeFailedError(str(self._failure))
        if self._health.state == STOPPED:
            raise RuntimeStoppedError("the runtime is stopped; call start() before submit()")

    def _check_worker(self) -> None:
        """A worker thread that ended without stop() (an error the supervisor could not catch)
        leaves no request waiting: the runtime turns failed."""
        thread = self._thread
        if (thread is not None and not thread.is_alive() and self._health.state == RUNNING
                and not self._stopping.is_set()):
            self._give_up("the worker thread ended unexpectedly (see the log for its traceback)",
                          self._health.last_error)

    def _recover(self, error: Exception) -> None:
        """An internal error in a worker cycle: fail the requests in flight, log, restart with
        the state reset, or give up when the restart budget is spent."""
        now_ns = self.clock.now_ns()
        reason = failure_reason(error)
        self._counters["errors"] += 1
        self._counters["worker_faults"] += 1
        with self._accept_lock:
            self._incoming.extendleft(reversed(self._arrived))  # re-armed after the reset
            self._arrived.clear()
            queued = {pending.request_id for pending in self._incoming}
            in_flight = [p for p in self._ledger.pending() if p.request_id not in queued]
        restart = self._restart_budget.allow(now_ns)
        logger.error(
            "the NPC worker hit %s; %d request(s) in flight are failed; %s", reason,
            len(in_flight), "it restarts with its state reset" if restart else
            f"it faulted more than {self.config.max_worker_restarts} times within "
            f"{self.config.restart_window_s:g} s and stops", exc_info=error,
        )
        fault = WorkerFaultError(
            f"the NPC worker hit {reason} while this request was in flight; it restarted with "
            "its state reset (the traceback is in the log)"
        )
        for pending in in_flight:
            self._ledger.fail(pending, fault, now_ns)
        if restart:
            self._reset_worker_state()
            self._health = WorkerHealth(RUNNING, self._health.restarts + 1, reason)
        else:
            self._give_up(
                f"the NPC worker faulted more than {self.config.max_worker_restarts} times "
                f"within {self.config.restart_window_s:g} s (last: {reason}) and stopped; the "
                "tracebacks are in the log (logger 'lego_embed.runtime'). Restart the runtime "
                "(stop(), start()) or report the bug with that log", reason,
            )

    def _give_up(self, message: str, last_error: str | None) -> None:
        self._failure = RuntimeFailedError(message)
        self._health = WorkerHealth(FAILED, self._health.restarts, last_error)
        self._fail_open(self._failure)

    def _fail_open(self, error: Exception) -> None:
        """Answers every open request (queued or in flight) with `error`."""
        now_ns = self.clock.now_ns()
        with self._accept_lock:
            self._incoming.clear()
            self._arrived.clear()
            pending = self._ledger.pending()
        for request in pending:
            self._ledger.fail(request, error, now_ns)

    def _fail_overdue(self, now_ns: int) -> None:
        """Fails the requests still unanswered max(overdue_limit_ms, their deadline) after their
        deadline (a line's: its next token's), saying what kept them waiting."""
        if now_ns < self._next_overdue_check_ns:
            return
        self._next_overdue_check_ns = now_ns + OVERDUE_CHECK_NS
        limit_ns = round(self.config.overdue_limit_ms * 1e6)
        for request in self.scheduler.pending:
            deadline_ns = request.deadline_ns - request.arrival_ns
            late_ns = now_ns - request.deadline_ns
            if late_ns <= max(limit_ns, deadline_ns):
                continue
            pending: PendingRequest = request.payload
            if not self._ledger.is_open(pending.request_id):  # answered by a fallback already
                self._drop(request)
                self._ledger.drop_correction(pending.request_id)
                continue
            what = (f"its line token {pending.progress.line_tokens + 1}'s {deadline_ns / 1e6:g} ms "
                    "deadline" if pending.progress.line_tokens else
                    f"its {pending.deadline_ms:g} ms deadline")
            error = RequestOverdueError(
                f"no answer {late_ns / 1e9:.1f} s after {what} ({self._stall_reason(now_ns)}); "
                "failed instead of waiting on"
            )
            self._drop(request)
            self._counters["overdue_requests"] += 1
            self._ledger.fail(pending, error, now_ns)
            self._note_outcome(math.inf)

    def _stall_reason(self, now_ns: int) -> str:
        if self._last_event_ns is not None and self.tracker.open_gap() is None:
            silent_s = (now_ns - self._last_event_ns) / 1e9
            return (f"the engine is inside a render pass (pass_begin without pass_end yet), "
                    f"last event {silent_s:.1f} s ago")
        head = self.scheduler.pending[0] if len(self.scheduler) else None
        predicted = ""
        if head is not None and self.executor.peek(head.state) is not None:
            longest_ms = max((e.mean_ms for e in dict(self.tracker.slots).values()), default=0.0)
            predicted = (f"; the most urgent one's next subtask is predicted at "
                         f"{self.scheduler.predicted_ns((head,)) / 1e6:.2f} ms, the engine's "
                         f"longest gap averages {longest_ms:.2f} ms")
        return (f"{len(self.scheduler)} request(s) queued; the engine's gaps left too little "
                f"headroom for their next subtasks{predicted}")

    # ------------------------------------------------------------------ worker
    def _warmup(self) -> None:
        vocab = self.executor.vocab_size
        length = min(self.config.warmup_prompt_tokens,
                     self.loaded.max_context_tokens - WARMUP_DECODE_TOKENS)
        prompt_ids = [(7 * i + 3) % vocab for i in range(length)]
        runs = [self.levels[0], *self.levels]
        for option in runs:
            request = self.executor.start(
                prompt_ids, GreedySampler(None, WARMUP_DECODE_TOKENS), option.plan
            )
            for timing in self.executor.run_to_completion(request):
                self.scheduler.record(timing.subtask, timing.duration_ns)
        # FFN slices, as the scheduler splits a block to fit the end of a gap
        for parts in SPLIT_PARTS if self.config.split_ffn else ():
            request = self.executor.start(
                prompt_ids, GreedySampler(None, WARMUP_DECODE_TOKENS), self.levels[0].plan
            )
            while self.executor.peek(request) is not None:
                self.executor.split_next(request, parts)
                timing = self.executor.step(request)
                self.scheduler.record(timing.subtask, timing.duration_ns)
        if not self.config.batching:
            return
        # batched shapes too, at the full model and the largest level (the only one with every
        # adaptor kind), so a batch's first prediction is measured, not scaled from one request
        for size in range(2, self.scheduler.config.max_batch + 1):
            for option in (self.levels[0], self.levels[-1]):
                states = [
                    self.executor.start(
                        prompt_ids, GreedySampler(None, WARMUP_DECODE_TOKENS), option.plan
                    )
                    for _ in range(size)
                ]
                while self.executor.peek(states[0]) is not None:
                    timing = self.executor.step_batch(states)
                    self.scheduler.record(timing.subtask, timing.duration_ns)

    def _window(self, window: WindowHeadroom) -> None:
        window_end_ns = window.start_ns + self.tracker.window_ns
        self.backpressure.note_window(window.total_ms, self.scheduler.usable_fraction)
        self.backpressure.note_decode_steps(
            [self.scheduler.decode_step_ns(level) for level in range(len(self.levels))])
        event = self.backpressure.on_window(window_end_ns)
        floor_from = self._level_floor_from()
        if floor_from is not None:
            self.scheduler.level_floor = (
                self._outcome_floor.on_window() if floor_from == "outcomes"
                else self.backpressure.sustaining_level(window_end_ns))
        self._backpressure_state = self.backpressure.snapshot(window_end_ns)
        if event is not None:
            self._counters["overload_events"] += 1
            self._overload_events.append(event)
        rate = self.headroom_rate()
        if self._window_backlogged and len(self.scheduler) and 0.0 < rate < 1.0:
            # requests waited the whole window: its compute shows what dispatch can really get
            busy_fraction = self._window_busy_ns / 1e6 / self.tracker.window_ms
            self.scheduler.observe_usable_fraction(busy_fraction / rate)
        self._window_busy_ns = 0
        self._window_backlogged = len(self.scheduler) > 0
        self.predictor.observe(window.total_ms)
        self._counters["relevels"] += self.scheduler.relevel_waiting(
            window_end_ns, self.headroom_rate()
        )
        self._shed_predicted_misses(window_end_ns)
        self.scheduler.compute_scarce = self.backpressure.needs_skipping(window_end_ns)

    def _level_floor_from(self) -> str | None:
        """What sets the window's level floor (`RuntimeConfig.level_floor_from`), None when
        there is none (the option off, or a policy other than `lego`)."""
        if self.config.window_level_floor and self.config.policy == "lego":
            return self.config.level_floor_from
        return None

    def _note_outcome(self, deadline_fraction: float) -> None:
        """An answer (or a request that ended without one) at this fraction of its deadline,
        for the window floor from outcomes (only when that is the floor in use)."""
        if self._level_floor_from() == "outcomes":
            self._outcome_floor.note_answer(deadline_fraction)

    def headroom_rate(self, now_ns: int | None = None) -> float:
        """Predicted fraction of wall time that is headroom, 0..1: 1.0 with no renderer
        reporting, and at `now_ns` while the engine is silent in a gap (`_engine_silent`:
        dispatch runs freely then, so the level choice counts on all of the time)."""
        if self._last_event_ns is None or (now_ns is not None and self._engine_silent(now_ns)):
            return 1.0
        predicted = self.predictor.predict()
        if predicted is not None and math.isfinite(predicted):
            return min(1.0, max(0.0, predicted / self.tracker.window_ms))
        if not self.tracker.slots:
            return 1.0
        per_frame = self.tracker.headroom_per_frame_ms()
        if not math.isfinite(per_frame):
            return 1.0
        return min(1.0, max(0.0, per_frame / self.config.frame_budget_ms))

    def _engine_silent(self, now_ns: int) -> bool:
        """Whether there is no renderer to protect now (window minimised, rendering paused),
        as the scheduler's dispatch judges it (`Scheduler.engine_silent`)."""
        return self.scheduler.engine_silent(now_ns, self.tracker.open_gap(), self._last_event_ns)

    def _work(self) -> None:
        if self.config.cpu_core is not None:
            os.sched_setaffinity(0, {self.config.cpu_core})
        if self.config.worker_yields:
            yield_to_engine_threads()
        while not self._stopping.is_set() and self._health.state == RUNNING:
            self._wake.clear()
            wait_s = self._cycle()
            if wait_s is not None:
                self._sleep(wait_s)
        if self._health.state == RUNNING:
            try:  # what was read between subtasks counts in the final stats
                self._drain_events()
            except Exception as error:  # supervision: stopping must not raise
                logger.error("applying the last engine events at stop failed: %r", error)

    def _sleep(self, wait_s: float) -> None:
        """Waits up to wait_s (s) for the doorbell or, with an attached event source and work
        waiting for a gap, also for the source's wake-up; then not at all when the source got
        events since the cycle read it. With no work waiting the source's events are read at
        the next wake-up (a request or the heartbeat), so an idle model costs the engine no
        wake-up. A source that fails here is detached (logged once): the worker goes on with
        `on_event` alone."""
        if self._events:  # read during the cycle (between subtasks), not applied yet
            return
        source = self._event_source
        if source is not None and (len(self.scheduler) or self._arrived):
            try:
                source.clear_wake()
                if source.has_unread():
                    return
                self._wake.wait(wait_s, (source.wake_fileno(),))
                self._slept = True
                return
            except Exception as error:  # supervision: a broken engine channel is no crash
                logger.error("the attached event source failed and is detached: %r", error)
                self._event_source = None
        self._wake.wait(wait_s)
        self._slept = source is None  # idle beside a source: its events are not wake-ups

    def _cycle(self) -> float | None:
        """One turn of the worker loop, supervised: None after running work or admitting in a
        gap's tail (turn again at once), else how long to sleep (s) unless woken."""
        try:
            self._drain_events()
            now_ns = self.clock.now_ns()
            if self._engine_silent(now_ns):  # the floor's demand and headroom are stale then
                self.scheduler.level_floor = 0  # (the next window end sets it again)
                self._outcome_floor.reset()
            self._answer_due_fallbacks(now_ns)  # a request due at its deadline is not superseded
            self._arm_incoming(now_ns)
            deferred = self._defers_admission(now_ns)
            if not deferred:
                self._admit()
            self._fail_overdue(now_ns)
            if self.config.record_timeline:
                self._note_backlog(now_ns)
            dispatch = self.scheduler.next_dispatch(
                now_ns, self.tracker.open_gap(), self._last_event_ns
            )
            if dispatch is None:
                if deferred and self._admit():  # the gap's tail: a new request may fit in it
                    return None
                if not len(self.scheduler):
                    self._window_backlogged = False
                return self._wait_s(now_ns)
            self._next_wake_ns = None
            self._counters["ffn_splits"] += dispatch.split
            self._execute(dispatch)
        except Exception as error:  # supervision: nothing may kill the worker silently
            self._recover(error)
        return None

    def _note_backlog(self, now_ns: int) -> None:
        queued = len(self.scheduler)
        if not self.backlog_timeline or self.backlog_timeline[-1][1] != queued:
            self.backlog_timeline.append((now_ns, queued))

    def _wait_s(self, now_ns: int) -> float:
        """How long to sleep when nothing may run: until an event or request wakes the worker,
        at most MAX_WAIT_NS (overdue requests are checked then), with requests waiting in a
        gap until the engine has been silent long enough to run them freely (no renderer to
        protect; inside a pass the engine is busy, however long it stays silent), and until the
        next fallback deadline. Sets `next_wake_ns` to the timed needs (not the heartbeat)."""
        wake_ns: int | None = None
        if (len(self.scheduler) and self._last_event_ns is not None
                and self.tracker.open_gap() is not None):
            silence_ns = self.scheduler.config.engine_silence_ns
            wake_ns = self._last_event_ns + silence_ns + SILENCE_CHECK_SLACK_NS
        next_fallback_ns = self._fallbacks.next_ns()
        if next_fallback_ns is not None:
            wake_ns = next_fallback_ns if wake_ns is None else min(wake_ns, next_fallback_ns)
        self._next_wake_ns = wake_ns
        wait_ns = MAX_WAIT_NS if wake_ns is None else min(MAX_WAIT_NS, max(wake_ns - now_ns, 0))
        return wait_ns / 1e9

    def _drain_events(self) -> None:
        self._events_waiting()
        woken, self._slept = self._slept, False
        now_ns = self.clock.now_ns() if woken and self._events else 0
        while self._events:
            event = self._events.popleft()
            if woken and event.kind != PASS_BEGIN:
                self._wake_lags_ns.append(now_ns - event.t_ns)
            self.tracker.on_event(event)
        while self._gpu_events:
            self.gpu_tracker.on_event(self._gpu_events.popleft())

    def _arm_incoming(self, now_ns: int) -> None:
        """Takes the submitted requests in, answers what they supersede and arms their fallbacks
        at once (a deadline inside a long pass is still answered at the deadline); admission
        itself waits for a gap."""
        while self._incoming:
            pending = self._incoming.popleft()
            if pending.supersede:
                self._supersede(pending, now_ns)
            if pending.fallback is not None:
                self._fallbacks.add(pending.deadline_ns, pending.request_id)
            self._arrived.append(pending)

    def _defers_admission(self, now_ns: int) -> bool:
        """Whether `lego` runs the queued work before admitting the arrived requests: in an
        inter-frame gap, admission (up to a millisecond of CPU with many NPCs) waits for the
        gap's tail, where no subtask fits the rest of it (`_cycle`), instead of delaying the
        gap's first subtask. Records the first gap it defers in (`_admission_deferred_in`, one
        for all the arrived requests): in any later gap they are admitted first, as they are
        when the oldest has waited a frame budget since its arrival (a long pass), and under
        `borrow_frame_slack` (its work runs past the gap's end, which has no tail before it)."""
        gap = self.tracker.open_gap()
        if (self.config.policy != "lego" or not self.config.admission_in_gap_tail
                or self.config.borrow_frame_slack or not self._arrived
                or not len(self.scheduler) or gap is None or not gap.inter_frame
                or now_ns - self._arrived[0].arrival_ns >= self.tracker.frame_budget_ns
                or self._engine_silent(now_ns)):
            return False
        if self._admission_deferred_in is None:
            self._admission_deferred_in = gap
        return self._admission_deferred_in.start_ns == gap.start_ns

    def _admission_due_ns(self, pending: PendingRequest) -> int:
        """When admitting `pending` stops waiting for a gap with room (it is then admitted at
        the worker's next turn, even inside a pass): one frame budget after its arrival or,
        when later, one frame budget after the estimated end of the gap admission was deferred
        in (the next inter-frame gap begins within a frame budget of it unless the frame is
        missed)."""
        budget_ns = self.tracker.frame_budget_ns
        due_ns = pending.arrival_ns + budget_ns
        deferred_in = self._admission_deferred_in
        if deferred_in is not None:
            due_ns = max(due_ns, deferred_in.end_estimate_ns + budget_ns)
        return due_ns

    def _admission_waits(self, pending: PendingRequest, now_ns: int) -> bool:
        """Whether admitting `pending` now would take the core from the renderer: under a
        gap-respecting policy admission (the prompt's executor state, the level choice: up to
        a millisecond of CPU with many NPCs) runs, like a subtask, in a gap with room for its
        measured cost (`_admission_ns`, learnt from admissions no engine event interrupted),
        until `_admission_due_ns`. It never waits for an engine that is silent
        (engine_silence_ms) or never reported."""
        if self.config.policy == "free" or self._last_event_ns is None:
            return False
        if (now_ns - self._last_event_ns > self.scheduler.config.engine_silence_ns
                or now_ns >= self._admission_due_ns(pending)):
            return False
        gap = self.tracker.open_gap()
        return gap is None or now_ns + self._admission_ns > gap.end_estimate_ns

    def _admit(self) -> bool:
        """Admits the arrived requests, oldest first, while each has room (`_admission_waits`);
        True if any was admitted. Once none is left waiting, no gap holds a deferral."""
        admitted = False
        while self._arrived and not self._events_waiting():  # an event may have closed the gap
            now_ns = self.clock.now_ns()
            if self._admission_waits(self._arrived[0], now_ns):
                return admitted
            pending = self._arrived.popleft()
            salvaged = self._salvaged.pop(pending.request_id, None)
            if not (self._ledger.is_open(pending.request_id)
                    or self._ledger.awaits_correction(pending.request_id)):
                continue  # answered meanwhile (stop, a failed worker)
            self.backpressure.note_request(pending.arrival_ns)
            static = self._static_ids(pending)
            prefix = self._prefixes.get(static) if static else None
            if prefix is not None:
                self._prefixes.move_to_end(static)
                self._counters["prefix_hits"] += 1
            if salvaged is not None and (prefix is None or len(salvaged.token_ids) > len(
                    prefix.token_ids)):
                prefix = salvaged
                self._counters["superseded_tokens_reused"] += len(salvaged.token_ids)
            split = 0
            if (static and static not in self._static_in_flight
                    and (prefix is None or len(prefix.token_ids) < len(static))):
                # this request prefills the static part with the full model; its KV is kept
                self._static_in_flight.add(static)
                pending.progress.static_owner = True
                split = len(static)
            sampler = pending.prepared.sampler
            state = self.executor.start(
                pending.prepared.prompt_ids, sampler, prefix=prefix, split_after=split
            )
            request = ScheduledRequest(
                pending.request_id, pending.npc_id, state, pending.arrival_ns,
                pending.deadline_ns, sampler.first_answer_tokens, payload=pending,
            )
            pending.progress.planned_cost_ns = tuple(
                self.scheduler.remaining_cost_ns(request, level)
                for level in range(len(self.levels))
            )
            self.backpressure.note_costs(pending.progress.planned_cost_ns)
            self.scheduler.admit(request, now_ns, self.headroom_rate(now_ns))
            if pending.fallback is not None:
                self._shed_if_hopeless(request, now_ns)
            admitted = True
            if not self._events_waiting():  # a pass that began meanwhile lengthened it
                self._admission_ns += ADMISSION_ALPHA * (
                    self.clock.now_ns() - now_ns - self._admission_ns)
        if not self._arrived:
            self._admission_deferred_in = None
        return admitted

    def _static_ids(self, pending: PendingRequest) -> tuple[int, ...]:
        """The prompt's static part when it is worth keeping (prefix_reuse, long enough)."""
        static = pending.prepared.encoded.static_ids
        if not self.config.prefix_reuse or len(static) < self.config.prefix_min_tokens:
            return ()
        return static

    def _drop(self, request: ScheduledRequest) -> None:
        """Takes a request off the queue (answered, superseded, shed, failed); a static prompt
        part it was prefilling for the others is left to the next request that has it."""
        self.scheduler.finish(request)
        pending: PendingRequest = request.payload
        if pending.progress.static_owner:
            pending.progress.static_owner = False
            self._static_in_flight.discard(pending.prepared.encoded.static_ids)

    def _supersede(self, pending: PendingRequest, now_ns: int) -> None:
        """Answers the NPC's older open requests that have delivered nothing yet `superseded`
        (an action already streamed or a line already speaking is carried out: nothing the game
        has shown is taken back), at once, even inside a pass, and drops their work (also a late
        run kept for a correction). The KV of the longest prompt prefix the newest of them
        shares with `pending` and holds in every layer (at least prefix_min_tokens long) is kept
        in `_salvaged` for the new request to start from when it is admitted."""
        npc_id, new_id = pending.npc_id, pending.request_id
        replaced = set()
        for old in self._ledger.pending():
            if (old.npc_id == npc_id and old.request_id < new_id
                    and old.progress.action_ns is None and old.progress.first_token_ns is None):
                replaced.add(old.request_id)
                self._predicted_misses.discard(old.request_id)
                if self._ledger.answer_without_model(old, SUPERSEDED, None, now_ns):
                    self._counters["superseded"] += 1
                    waited = (now_ns - old.arrival_ns) / 1e6 / old.deadline_ms
                    if waited >= LOWER_AT:  # replaced early it says nothing about the load
                        self._note_outcome(waited)
        for old_id in replaced:
            self._take_off_queue(old_id, None)  # if still waiting for admission
        older = [r for r in self.scheduler.pending if r.npc_id == npc_id and r.request_id < new_id
                 and (r.request_id in replaced or not self._ledger.is_open(r.request_id))]
        new_ids = pending.prepared.prompt_ids
        for request in sorted(older, key=lambda r: r.request_id):
            self._drop(request)
            self._ledger.drop_correction(request.request_id)
            shared = 0
            for ours, theirs in zip(request.state.prompt_ids, new_ids[:-1], strict=False):
                if ours != theirs:
                    break
                shared += 1
            shared = min(shared, min(len(kv) for kv in request.state.kv))
            if self.config.prefix_reuse and shared >= max(self.config.prefix_min_tokens, 1):
                self._salvaged[new_id] = self.executor.prefix_from(request.state, shared)

    def _shed_if_hopeless(self, request: ScheduledRequest, now_ns: int) -> bool:
        """`lego` with a fallback: when no skip level can finish the request's action by its
        deadline (the same prediction that picks levels), its compute goes to the others and
        the fallback answers it at the deadline (or, with corrections, it runs on)."""
        pending: PendingRequest = request.payload
        if (self.config.policy != "lego" or pending.fallback is None or pending.corrections
                or pending.progress.action_ns is not None  # a line after its action: no stand-in
                or not self.tracker.windows  # no measured headroom yet: nothing to predict from
                or self.scheduler.can_finish(request, now_ns, self.headroom_rate(now_ns))):
            return False
        self._drop(request)
        self._predicted_misses.add(pending.request_id)
        return True

    def _shed_predicted_misses(self, now_ns: int) -> None:
        for request in self.scheduler.pending:
            if request.payload.fallback is not None:
                self._shed_if_hopeless(request, now_ns)

    def _answer_due_fallbacks(self, now_ns: int) -> None:
        """Answers every request whose deadline came with its fallback (if still open and its
        action not made: a ChoiceThenLine whose action came in time streams its line on)."""
        for request_id in self._fallbacks.due(now_ns):
            pending = self._ledger.pending_request(request_id)
            predicted = request_id in self._predicted_misses
            self._predicted_misses.discard(request_id)
            if pending is None or pending.progress.action_ns is not None:
                continue
            context = FallbackContext(
                request_id, pending.npc_id, tuple(pending.request.output.actions),
                PREDICTED_MISS if predicted else DEADLINE_PASSED,
            )
            scheduled = next((r for r in self.scheduler.pending if r.request_id == request_id),
                             None)
            try:
                action = resolve_fallback(pending.fallback, context)
            except Exception as error:  # the game's fallback callback failed: answer with it
                self._counters["fallback_errors"] += 1
                self._take_off_queue(request_id, scheduled)
                self._ledger.fail(pending, error, now_ns)
                continue
            self._ledger.answer_without_model(pending, FALLBACK, action, now_ns)
            self._note_outcome(math.inf)
            self._counters["fallbacks"] += 1
            self._counters["fallbacks_predicted"] += predicted
            if not pending.corrections:
                self._take_off_queue(request_id, scheduled)

    def _take_off_queue(self, request_id: int, scheduled: ScheduledRequest | None) -> None:
        """Forgets an answered request's work: dropped from the scheduler (`scheduled`), or
        from the requests waiting for a gap to be admitted."""
        if scheduled is not None:
            self._drop(scheduled)
        else:
            self._arrived = deque(p for p in self._arrived if p.request_id != request_id)
            self._salvaged.pop(request_id, None)

    def _execute(self, dispatch: Dispatch) -> None:
        batch = dispatch.requests
        for index in range(dispatch.max_subtasks):
            if index:
                if self._events_waiting() or self._incoming or self._fallback_due():
                    return
                predicted_ns = self.scheduler.predicted_ns(batch)
                if dispatch.gap_end_ns is None or not self.scheduler.fits(
                    predicted_ns, self.clock.now_ns(), dispatch.gap_end_ns
                ):
                    return
            if not self._step(batch):
                return

    def _fallback_due(self) -> bool:
        next_ns = self._fallbacks.next_ns()
        return next_ns is not None and next_ns <= self.clock.now_ns()

    def _step(self, batch: tuple[ScheduledRequest, ...]) -> bool:
        """Runs one subtask of the batch; False when the batch's composition must be rebuilt."""
        start_ns = self.clock.now_ns()
        try:
            if len(batch) == 1:
                timing = self.executor.step(batch[0].state)
            else:
                timing = self.executor.step_batch([r.state for r in batch])
        except Exception as error:  # a failing subtask fails its requests; the others go on
            self._counters["errors"] += 1
            logger.error("a subtask of request(s) %s failed; they are answered with the error",
                         [r.request_id for r in batch], exc_info=error)
            for request in batch:
                self._complete(request, failure_reason(error))
            self._shed_predicted_misses(self.clock.now_ns())
            return False
        end_ns = self.clock.now_ns()
        if not self._events_waiting():  # one that shared the device with rendering: no sample
            self.scheduler.record(timing.subtask, timing.duration_ns)
        else:
            self._counters["contended_subtasks"] += 1
            self.scheduler.note_run(timing.duration_ns)
        self._counters["subtasks"] += 1
        self._counters["batched_subtasks"] += len(batch) > 1
        self._counters["llm_busy_ns"] += end_ns - start_ns
        self._window_busy_ns += end_ns - start_ns
        if self.config.record_timeline:
            self.timeline.append((start_ns, end_ns, timing.subtask.kind.value, len(batch)))
        keep_going = True
        for request in batch:
            state = request.state
            if not state.at_pass_start and not state.finished:
                continue
            keep_going = False
            self._keep_static_part(request)
            self._stream(request, end_ns)
            if state.finished:
                self._complete(request, None)
                continue
            self.scheduler.pass_boundary(request)
            escalated = self.scheduler.recheck(request, end_ns, self.headroom_rate(end_ns))
            self._counters["escalations"] += escalated
        if not keep_going:  # after the whole batch: shedding must not take one of its members
            self._shed_predicted_misses(self.clock.now_ns())
        return keep_going

    def _keep_static_part(self, request: ScheduledRequest) -> None:
        """After the pass that prefilled a prompt's static part: keeps its KV, and restarts the
        waiting requests with the same static part from it (none of their subtasks ran)."""
        pending: PendingRequest = request.payload
        state = request.state
        if (not pending.progress.static_owner or state.in_static_part
                or state.position != state.split_at):
            return
        static = pending.prepared.encoded.static_ids
        prefix = self.executor.prefix_from(state, len(static))
        self._prefixes[static] = prefix
        self._counters["static_prefills"] += 1
        while len(self._prefixes) > self.config.max_static_prefixes:
            self._prefixes.popitem(last=False)
        self._static_in_flight.discard(static)
        pending.progress.static_owner = False
        for other in self.scheduler.pending:
            waiting: PendingRequest = other.payload
            if (other is request or other.state.timings or other.state.position >= len(static)
                    or waiting.prepared.encoded.static_ids != static):
                continue
            other.state = self.executor.start(
                waiting.prepared.prompt_ids, waiting.prepared.sampler, prefix=prefix
            )
            self.scheduler.pass_boundary(other)
            self._counters["prefix_hits"] += 1

    def _stream(self, request: ScheduledRequest, now_ns: int) -> None:
        """Delivers what the last pass decided while the request is open (streamed events are
        not answers): a ChoiceThenLine's action, a line token with the text it releases; then
        moves the request's deadline to its next token's."""
        pending: PendingRequest = request.payload
        progress = pending.progress
        spec_request = pending.request
        sampler = pending.prepared.sampler
        generated = request.state.generated
        level = self.levels[request.level].level
        latency_ms = (now_ns - pending.arrival_ns) / 1e6
        if progress.action_ns is None and sampler.text is not None:
            action = sampler.action(generated)
            if action is not None:
                progress.action_ns = now_ns
                self._ledger.notify(pending, spec_request.on_action, ActionEvent(
                    pending.request_id, pending.npc_id, action, now_ns, latency_ms,
                    latency_ms <= spec_request.deadline_ms, level,
                ))
        if sampler.text is None:
            return
        count = len(sampler.line_ids(generated))
        if request.state.finished:
            sampler.text.finish()
        text = sampler.text.released[progress.shown_chars:]
        new_token = count > progress.line_tokens
        if not new_token and not text:
            return
        progress.shown_chars = len(sampler.text.released)
        deadline_ms = spec_request.token_deadline_ms(max(count, 1))
        met = latency_ms <= deadline_ms
        if new_token:
            progress.line_tokens = count
            self._counters["line_tokens"] += 1
            if progress.first_token_ns is None:
                progress.first_token_ns = now_ns
            if not met:
                progress.late_tokens += 1
                self._counters["late_tokens"] += 1
        self._ledger.notify(pending, spec_request.on_token, TokenEvent(
            pending.request_id, pending.npc_id, max(count, 1), text, now_ns, latency_ms,
            deadline_ms, met, level,
        ))
        if count and not request.state.finished:
            next_deadline_ns = pending.arrival_ns + round(
                spec_request.token_deadline_ms(count + 1) * 1e6)
            changed = self.scheduler.retarget(
                request, next_deadline_ns, len(generated) + 1, now_ns, self.headroom_rate(now_ns)
            )
            self._counters["token_level_changes"] += changed

    def _complete(self, request: ScheduledRequest, error: str | None) -> None:
        """The model's work on a request ended (finished, or failed with `error`): its answer,
        or, after a fallback that asked for corrections, the correction."""
        now_ns = self.clock.now_ns()
        pending: PendingRequest = request.payload
        progress = pending.progress
        state = request.state
        spec = pending.request.output
        streamed = pending.streamed_line()  # before read_answer releases what was held back
        answer = read_answer(pending.prepared.sampler, state.generated)
        if error is None and spec.kind != Line.kind and answer.action is None:
            error = "the answer is not one of the allowed actions"
        option = self.levels[request.level]
        compute_ns = sum(t.duration_ns for t in state.timings)
        action_ns = progress.action_ns if spec.kind == "choice_then_line" else (
            now_ns if answer.action is not None else None)
        action_ms = pending.since_arrival_ms(action_ns)
        first_token_ms = pending.since_arrival_ms(progress.first_token_ns)
        due = ([action_ms] if spec.kind != Line.kind else []) + (
            [first_token_ms] if spec.kind != Choice.kind else [])
        in_time = all(t is not None and t <= pending.deadline_ms for t in due)
        if error is None and due and not self._ledger.awaits_correction(request.request_id):
            self._note_outcome(max(math.inf if t is None else t for t in due)
                               / pending.deadline_ms)
        line = answer.line if error is None else streamed
        decision = Decision(
            request_id=request.request_id,
            npc_id=request.npc_id,
            action=None if error else answer.action,
            latency_ms=(now_ns - request.arrival_ns) / 1e6,
            skip_level=option.level,
            skipped_layers=option.skipped_layers,
            tokens=len(state.generated),
            deadline_ms=pending.deadline_ms,
            deadline_met=error is None and in_time,
            error=error,
            escalations=request.escalations,
            compute_ms=compute_ns / 1e6,
            expected_accuracy=option.accuracy,
            status=DECIDED if error is None else FAILED_ANSWER,
            output=spec.kind,
            line=line,
            action_ms=action_ms,
            first_token_ms=first_token_ms,
            line_tokens=answer.line_tokens if error is None else progress.line_tokens,
            late_tokens=progress.late_tokens,
            warnings=pending.request.warnings,
        )
        self._drop(request)
        if state.finished:
            self.backpressure.note_answer(
                progress.planned_cost_ns, pending.prepared.sampler.first_answer_tokens,
                len(state.generated))
        rate = self.headroom_rate(now_ns)
        wall_ns = now_ns - request.arrival_ns
        if (request.alone and error is None and 0.0 < rate < 1.0 and wall_ns > 0
                and spec.kind == Choice.kind):  # a line waits for its reading pace, not compute
            # a request that never waited behind another shows which share of the predicted
            # headroom dispatch really gets: its compute over (its wall time x headroom rate)
            self.scheduler.observe_usable_fraction(compute_ns / (wall_ns * rate))
        self._counters["relevels"] += self.scheduler.relevel_waiting(
            now_ns, self.headroom_rate(now_ns))
        if self._ledger.awaits_correction(request.request_id):
            self._ledger.correct(decision)
        else:
            self._ledger.answer(decision)
