"""The Runtime: the game-facing API that runs NPC requests in the renderer's idle gaps.

Requests are task-neutral (`runtime.request.Request`: a two-part prompt, an output spec, a
reaction deadline and, for lines, a reading pace). The static part of a prompt is prefilled
once with the full model and its KV kept, so every later request with the same static text
(any NPC's) prefills only its dynamic part. Line tokens are streamed to `on_token` as they are
made, each with its own deadline.

Threading model. The game (or an engine bridge) calls `on_event`, `submit`, `poll` and
`stats` from its own threads; none of them runs inference or waits for it. One background
worker thread, started by `start()`, owns the executor, the scheduler, the headroom tracker and
the predictor: it drains the engine events, admits new requests (choosing their skip level),
asks the scheduler what may run now and runs one subtask (or one batched subtask of several
requests) at a time, so it can stop at any subtask boundary when a gap closes. Finished
decisions go to a queue that `poll()` empties and, if given, to the request's callback, which
runs on the worker thread (keep it short; hand the result to the game thread). On CUDA the
subtasks run on the executor's low-priority stream; the render work is expected on the engine's
own streams.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lego_embed.errors import RuntimeConfigError
from lego_embed.model.executor import Executor, GreedySampler
from lego_embed.model.kv_cache import PrefixCache
from lego_embed.model.layer_plan import LayerPlan
from lego_embed.model.loading import LoadedModel
from lego_embed.model.profile import CostProfile
from lego_embed.npc.answer import (
    AnswerSampler,
    FreeChoiceSampler,
    make_sampler,
    read_answer,
)
from lego_embed.npc.chat_template import ChatTemplate
from lego_embed.npc.output_spec import Choice
from lego_embed.npc.prompt_parts import EncodedPrompt, encode_prompt
from lego_embed.runtime.events import PASS_BEGIN, EngineEvent
from lego_embed.runtime.gpu_stats import nvml_stats
from lego_embed.runtime.headroom import HeadroomTracker, WindowHeadroom
from lego_embed.runtime.predictor import HeadroomPredictor
from lego_embed.runtime.request import ActionEvent, Request, TokenEvent
from lego_embed.runtime.scheduler import (
    POLICIES,
    CostModel,
    Dispatch,
    LevelOption,
    ScheduledRequest,
    Scheduler,
    SchedulerConfig,
)

FREE_TEXT_TOKENS = 16
WARMUP_DECODE_TOKENS = 3
SILENCE_CHECK_SLACK_S = 0.001  # wake just after the engine-silence threshold, not just before


@dataclass(frozen=True)
class Decision:
    """One finished NPC request (a decision, a line, or both).

    action: the chosen action (Choice, ChoiceThenLine; None for a Line, or when `error` says
    why). line: what the NPC said (Line, ChoiceThenLine), the streamed texts joined.
    latency_ms: from `submit()` to the finished answer. skip_level / skipped_layers: the level
    the request ended at and the layers it skipped. tokens: generated tokens. deadline_ms: the
    request's reaction deadline (relative to the request); deadline_met: the action and the
    first line token were made within it. escalations: skip-level raises mid-request.
    compute_ms: measured subtask time. expected_accuracy: the level's measured accuracy (0..1)
    from the skip bundle, when known. output: the output spec's kind. action_ms /
    first_token_ms: when the action / the first line token were known (ms from the request).
    line_tokens: tokens of the line; late_tokens: line tokens made after their own deadline
    (the first at deadline_ms, then one per 1/pace). warnings: problems found when the request
    was built that did not stop it (unused fields, an unknown persona).
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
    output: str = "choice"
    line: str | None = None
    action_ms: float | None = None
    first_token_ms: float | None = None
    line_tokens: int = 0
    late_tokens: int = 0
    warnings: tuple[str, ...] = ()


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
    record_timeline: keep (start_ns, end_ns, kind, batch) of every subtask in `Runtime.timeline`.
    warmup: measure the cost profile at start() (one request per level, and batches of
    2..max_batch requests when batching).
    constrained: decode with the action trie (default); False generates up to 16 free tokens
    (LEGO's shape) and accepts a Choice's answer only if its text is an allowed action (lines
    are always decoded by their output spec). cost_profile:
    a `lego-embed profile` JSON that seeds the cost model (the warm-up and every measured
    subtask then correct it). prefix_min_tokens: keep a static prompt part only if it is at least
    this long (a short prefix saves almost nothing, and attending over cached positions needs a
    mask, which made the bundled model's attention block 60% slower on CPU).
    cost_deviations / gap_deviations: how conservative predictions
    are (subtask cost: mean + k deviations; gap length: mean - k deviations).
    warmup_prompt_tokens: length of the warm-up prompt (tokens). chat_template: apply the model
    folder's chat template to prompts when it has one. max_static_prefixes: static prompt
    parts whose KV is kept (least recently used dropped first).
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
    warmup_prompt_tokens: int = 32
    chat_template: bool = True
    max_static_prefixes: int = 64

    def validate(self) -> RuntimeConfig:
        if self.policy not in POLICIES:
            raise RuntimeConfigError(
                f"policy {self.policy!r} is not one of {', '.join(POLICIES)}"
            )
        for name in ("frame_budget_ms", "window_ms"):
            if not getattr(self, name) > 0:
                raise RuntimeConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.usable_fraction <= 1:
            raise RuntimeConfigError(
                f"usable_fraction must be in (0, 1], got {self.usable_fraction}"
            )
        if self.margin_us < 0 or self.margin_fraction < 0 or self.static_slice_ms <= 0:
            raise RuntimeConfigError("margins must be >= 0 and static_slice_ms > 0")
        for name in ("warmup_prompt_tokens", "max_static_prefixes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise RuntimeConfigError(f"{name} must be a whole number >= 1, got "
                                         f"{getattr(self, name)!r}")
        if self.cpu_core is not None and self.cpu_core not in os.sched_getaffinity(0):
            raise RuntimeConfigError(
                f"cpu_core {self.cpu_core} is not available; pick one of "
                f"{sorted(os.sched_getaffinity(0))}"
            )
        return self


@dataclass(eq=False)
class _Incoming:
    """A submitted request with its encoded prompt and sampler, and what it streamed so far."""

    request_id: int
    request: Request
    encoded: EncodedPrompt
    sampler: AnswerSampler
    arrival_ns: int
    action_ns: int | None = None
    first_token_ns: int | None = None
    line_tokens: int = 0
    late_tokens: int = 0
    shown_chars: int = 0
    static_owner: bool = False

    @property
    def deadline_ms(self) -> float:
        return self.request.deadline_ms


class Runtime:
    """Schedules NPC requests into rendering headroom (see the module docstring).

    `bundle` is a SkipBundle (lego_embed.skip) or None (level 0 only). `accuracy_by_level`
    overrides the expected accuracy per level (e.g. from docs/benchmarks/skip_accuracy.json).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        bundle: Any = None,
        config: RuntimeConfig | None = None,
        accuracy_by_level: Mapping[int, float] | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = (config or RuntimeConfig()).validate()
        self.chat_template = (
            ChatTemplate.from_folder(loaded.path, loaded.tokenizer.special_tokens)
            if self.config.chat_template else None
        )
        self.executor = Executor(loaded)
        self.levels = self._levels(loaded, bundle, accuracy_by_level or {})
        cfg = self.config
        self.scheduler = Scheduler(
            self.executor,
            self.levels,
            SchedulerConfig(
                policy=cfg.policy,
                margin_ns=round(cfg.margin_us * 1000),
                margin_fraction=cfg.margin_fraction,
                usable_fraction=cfg.usable_fraction,
                edf=cfg.edf,
                batching=cfg.batching,
                static_level=cfg.static_level,
                static_slice_ns=round(cfg.static_slice_ms * 1e6),
            ),
            CostModel.from_profile(CostProfile.load(cfg.cost_profile), cfg.cost_deviations)
            if cfg.cost_profile else CostModel(deviations=cfg.cost_deviations),
        )
        self.predictor = HeadroomPredictor()
        self.tracker = HeadroomTracker(
            cfg.frame_budget_ms, cfg.window_ms, on_window=self._window,
            gap_deviations=cfg.gap_deviations,
        )
        self.timeline: list[tuple[int, int, str, int]] = []
        self._events: deque[EngineEvent] = deque()
        self._incoming: deque[_Incoming] = deque()
        self._done: deque[Decision] = deque()
        self._decisions: list[Decision] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._prefixes: OrderedDict[tuple[int, ...], PrefixCache] = OrderedDict()
        self._static_in_flight: set[tuple[int, ...]] = set()
        self._last_event_ns: int | None = None
        self._window_busy_ns = 0
        self._window_backlogged = False
        self._counters = {
            "subtasks": 0, "batched_subtasks": 0, "prefix_hits": 0, "escalations": 0,
            "llm_busy_ns": 0, "errors": 0, "contended_subtasks": 0, "relevels": 0,
            "static_prefills": 0, "line_tokens": 0, "late_tokens": 0, "token_level_changes": 0,
        }

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

    # ------------------------------------------------------------------ game-facing API
    def start(self) -> None:
        """Measures the cost profile (one warm-up run per level, if enabled) and starts the
        worker thread. Call it at load time, before frames are reported."""
        if self._thread is not None:
            return
        if self.config.warmup:
            self._warmup()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._work, name="lego-embed-runtime", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops the worker after its current subtask; unfinished requests stay unanswered."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def on_event(self, event: EngineEvent) -> None:
        """Reports a rendering event; O(1), never blocks on inference. Only events that can
        open a gap wake the worker: a pass_begin closes one, and the worker sees it between
        subtasks without being woken, so it never takes the device from a starting pass."""
        self._events.append(event)
        self._last_event_ns = event.t_ns
        if event.kind != PASS_BEGIN:
            self._wake.set()

    def submit(self, request: Request) -> int:
        """Queues a request and returns its id. Encodes the prompt (with the model's chat
        template when it has one) and builds the output spec's sampler now, so a bad request
        raises its typed error here (InvalidActionSetError, PromptTooLongError, ...); never
        waits for inference."""
        if not isinstance(request, Request):
            raise RuntimeConfigError(
                f"submit takes a lego_embed.runtime.request.Request, got {type(request).__name__}"
            )
        arrival_ns = time.monotonic_ns()
        tokenizer = self.loaded.tokenizer
        encoded = encode_prompt(tokenizer, request.prompt, self.chat_template)
        if self.config.constrained or not isinstance(request.output, Choice):
            sampler = make_sampler(tokenizer, request.output)
        else:  # LEGO's shape: free tokens, accepted only if they spell an allowed action
            make_sampler(tokenizer, request.output)  # still checks the action set
            sampler = FreeChoiceSampler(tokenizer, request.output, FREE_TEXT_TOKENS)
        self.executor.check_prompt(encoded.ids, sampler)
        request_id = next(self._ids)
        self._incoming.append(_Incoming(request_id, request, encoded, sampler, arrival_ns))
        self._wake.set()
        return request_id

    def poll(self) -> list[Decision]:
        """Requests finished since the last poll, oldest first."""
        finished = []
        while self._done:
            finished.append(self._done.popleft())
        return finished

    def stats(self) -> dict[str, Any]:
        """Counters, latencies, headroom estimates, the cost profile and GPU stats (NVML)."""
        decisions = list(self._decisions)
        latencies = [d.latency_ms for d in decisions if d.error is None]
        lines = [d for d in decisions if d.line is not None]
        first_tokens = [d.first_token_ms for d in lines if d.first_token_ms is not None]
        predicted = self.predictor.predict()
        windows = self.tracker.windows
        return {
            "policy": self.config.policy,
            "levels": [
                {"level": o.level, "skipped_layers": o.skipped_layers, "accuracy": o.accuracy}
                for o in self.levels
            ],
            "decisions": len(decisions),
            "slo_attainment": (
                sum(d.deadline_met for d in decisions) / len(decisions) if decisions else None
            ),
            "p50_latency_ms": float(np.percentile(latencies, 50)) if latencies else None,
            "p99_latency_ms": float(np.percentile(latencies, 99)) if latencies else None,
            "mean_skipped_layers": (
                float(np.mean([d.skipped_layers for d in decisions])) if decisions else None
            ),
            "queue_length": len(self.scheduler) + len(self._incoming),
            "subtasks": self._counters["subtasks"],
            "batched_subtasks": self._counters["batched_subtasks"],
            "prefix_hits": self._counters["prefix_hits"],
            "escalations": self._counters["escalations"],
            "errors": self._counters["errors"],
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
            "frames_seen": self.tracker.frames,
            "windows": len(windows),
            "last_window_headroom_ms": windows[-1].total_ms if windows else None,
            "predicted_window_headroom_ms": predicted,
            "usable_fraction": self.scheduler.usable_fraction,
            "slot_estimates_ms": {k: v.mean_ms for k, v in self.tracker.slots.items()},
            "cost_profile_ns": self.scheduler.cost.profile_ns(),
            "gpu": nvml_stats(),
        }

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
        rate = self.headroom_rate()
        if self._window_backlogged and len(self.scheduler) and 0.0 < rate < 1.0:
            # requests waited the whole window: its compute shows what dispatch can really get
            busy_fraction = self._window_busy_ns / 1e6 / self.tracker.window_ms
            self.scheduler.observe_usable_fraction(busy_fraction / rate)
        self._window_busy_ns = 0
        self._window_backlogged = len(self.scheduler) > 0
        self.predictor.observe(window.total_ms)
        self._counters["relevels"] += self.scheduler.relevel_waiting(
            window.start_ns + self.tracker.window_ns, self.headroom_rate()
        )

    def headroom_rate(self) -> float:
        """Predicted fraction of wall time that is headroom (1.0 with no renderer reporting)."""
        if self._last_event_ns is None:
            return 1.0
        predicted = self.predictor.predict()
        if predicted is not None:
            return min(1.0, predicted / self.tracker.window_ms)
        per_frame = self.tracker.headroom_per_frame_ms()
        return min(1.0, per_frame / self.config.frame_budget_ms) if per_frame else 1.0

    def _work(self) -> None:
        if self.config.cpu_core is not None:
            os.sched_setaffinity(0, {self.config.cpu_core})
        while not self._stopping.is_set():
            self._wake.clear()
            self._drain_events()
            now_ns = time.monotonic_ns()
            self._admit(now_ns)
            dispatch = self.scheduler.next_dispatch(
                now_ns, self.tracker.open_gap(), self._last_event_ns
            )
            if dispatch is None:
                if not len(self.scheduler):
                    self._window_backlogged = False
                self._wake.wait(self._wait_s())
                continue
            self._execute(dispatch)

    def _wait_s(self) -> float:
        """How long to sleep when nothing may run: until an event or request wakes the worker,
        or, with requests waiting, until the engine has been silent long enough to run them
        freely (no renderer to protect)."""
        silence_ns = self.scheduler.config.engine_silence_ns
        if self._last_event_ns is None or not len(self.scheduler):
            return silence_ns / 1e9
        until_silent_ns = self._last_event_ns + silence_ns - time.monotonic_ns()
        return max(until_silent_ns, 0) / 1e9 + SILENCE_CHECK_SLACK_S

    def _drain_events(self) -> None:
        while self._events:
            self.tracker.on_event(self._events.popleft())

    def _admit(self, now_ns: int) -> None:
        while self._incoming:
            incoming = self._incoming.popleft()
            static = self._static_ids(incoming)
            prefix = self._prefixes.get(static) if static else None
            split = 0
            if prefix is not None:
                self._prefixes.move_to_end(static)
                self._counters["prefix_hits"] += 1
            elif static and static not in self._static_in_flight:
                # this request prefills the static part with the full model; its KV is kept
                self._static_in_flight.add(static)
                incoming.static_owner = True
                split = len(static)
            state = self.executor.start(
                incoming.encoded.ids, incoming.sampler, prefix=prefix, split_after=split
            )
            request = ScheduledRequest(
                incoming.request_id, incoming.request.npc_id, state, incoming.arrival_ns,
                incoming.arrival_ns + round(incoming.deadline_ms * 1e6),
                incoming.sampler.first_answer_tokens, payload=incoming,
            )
            self.scheduler.admit(request, now_ns, self.headroom_rate())

    def _static_ids(self, incoming: _Incoming) -> tuple[int, ...]:
        """The prompt's static part when it is worth keeping (prefix_reuse, long enough)."""
        static = incoming.encoded.static_ids
        if not self.config.prefix_reuse or len(static) < self.config.prefix_min_tokens:
            return ()
        return static

    def _execute(self, dispatch: Dispatch) -> None:
        batch = dispatch.requests
        for index in range(dispatch.max_subtasks):
            if index:
                if self._events or self._incoming:
                    return
                predicted_ns = self.scheduler.predicted_ns(batch)
                if dispatch.gap_end_ns is None or not self.scheduler.fits(
                    predicted_ns, time.monotonic_ns(), dispatch.gap_end_ns
                ):
                    return
            if not self._step(batch):
                return

    def _step(self, batch: tuple[ScheduledRequest, ...]) -> bool:
        """Runs one subtask of the batch; False when the batch's composition must be rebuilt."""
        start_ns = time.monotonic_ns()
        try:
            if len(batch) == 1:
                timing = self.executor.step(batch[0].state)
            else:
                timing = self.executor.step_batch([r.state for r in batch])
        except Exception as error:  # a failing request is answered with its error, not dropped
            self._counters["errors"] += 1
            for request in batch:
                self._complete(request, f"{type(error).__name__}: {error}")
            return False
        end_ns = time.monotonic_ns()
        if not self._events:  # a subtask that shared the device with rendering is no cost sample
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
            escalated = self.scheduler.recheck(request, end_ns, self.headroom_rate())
            self._counters["escalations"] += escalated
        return keep_going

    def _keep_static_part(self, request: ScheduledRequest) -> None:
        """After the pass that prefilled a prompt's static part: keeps its KV, and restarts the
        waiting requests with the same static part from it (none of their subtasks ran)."""
        incoming: _Incoming = request.payload
        state = request.state
        if not incoming.static_owner or state.in_static_part or state.position != state.split_at:
            return
        static = incoming.encoded.static_ids
        prefix = self.executor.prefix_from(state, len(static))
        self._prefixes[static] = prefix
        self._counters["static_prefills"] += 1
        while len(self._prefixes) > self.config.max_static_prefixes:
            self._prefixes.popitem(last=False)
        self._static_in_flight.discard(static)
        incoming.static_owner = False
        for other in self.scheduler.pending:
            waiting: _Incoming = other.payload
            if other is request or other.state.timings or waiting.encoded.static_ids != static:
                continue
            other.state = self.executor.start(waiting.encoded.ids, waiting.sampler, prefix=prefix)
            self.scheduler.pass_boundary(other)
            self._counters["prefix_hits"] += 1

    def _stream(self, request: ScheduledRequest, now_ns: int) -> None:
        """Delivers what the last pass decided: a ChoiceThenLine's action, a line token (with
        the text it releases); then moves the request's deadline to its next token's."""
        incoming: _Incoming = request.payload
        spec_request = incoming.request
        sampler = incoming.sampler
        generated = request.state.generated
        level = self.levels[request.level].level
        latency_ms = (now_ns - incoming.arrival_ns) / 1e6
        if incoming.action_ns is None and sampler.text is not None:
            action = sampler.action(generated)
            if action is not None:
                incoming.action_ns = now_ns
                if spec_request.on_action is not None:
                    spec_request.on_action(ActionEvent(
                        incoming.request_id, spec_request.npc_id, action, now_ns, latency_ms,
                        latency_ms <= spec_request.deadline_ms, level,
                    ))
        if sampler.text is None:
            return
        count = len(sampler.line_ids(generated))
        if request.state.finished:
            sampler.text.finish()
        text = sampler.text.released[incoming.shown_chars:]
        new_token = count > incoming.line_tokens
        if not new_token and not text:
            return
        incoming.shown_chars = len(sampler.text.released)
        deadline_ms = spec_request.token_deadline_ms(max(count, 1))
        met = latency_ms <= deadline_ms
        if new_token:
            incoming.line_tokens = count
            self._counters["line_tokens"] += 1
            if incoming.first_token_ns is None:
                incoming.first_token_ns = now_ns
            if not met:
                incoming.late_tokens += 1
                self._counters["late_tokens"] += 1
        if spec_request.on_token is not None:
            spec_request.on_token(TokenEvent(
                incoming.request_id, spec_request.npc_id, max(count, 1), text, now_ns,
                latency_ms, deadline_ms, met, level,
            ))
        if count and not request.state.finished:
            next_deadline_ns = incoming.arrival_ns + round(
                spec_request.token_deadline_ms(count + 1) * 1e6)
            changed = self.scheduler.retarget(
                request, next_deadline_ns, len(generated) + 1, now_ns, self.headroom_rate()
            )
            self._counters["token_level_changes"] += changed

    def _complete(self, request: ScheduledRequest, error: str | None) -> None:
        now_ns = time.monotonic_ns()
        incoming: _Incoming = request.payload
        state = request.state
        answer = read_answer(incoming.sampler, state.generated)
        spec = incoming.request.output
        if error is None and spec.kind != "line" and answer.action is None:
            error = "the answer is not one of the allowed actions"
        if incoming.static_owner:  # it failed before its static part was kept
            self._static_in_flight.discard(incoming.encoded.static_ids)
        option = self.levels[request.level]

        def since_request_ms(t_ns: int | None) -> float | None:
            return None if t_ns is None else (t_ns - request.arrival_ns) / 1e6

        action_ms = since_request_ms(incoming.action_ns if spec.kind == "choice_then_line"
                                     else (now_ns if answer.action is not None else None))
        first_token_ms = since_request_ms(incoming.first_token_ns)
        due = ([action_ms] if spec.kind != "line" else []) + (
            [first_token_ms] if spec.kind != "choice" else [])
        in_time = all(t is not None and t <= incoming.deadline_ms for t in due)
        decision = Decision(
            request_id=request.request_id,
            npc_id=request.npc_id,
            action=None if error else answer.action,
            latency_ms=(now_ns - request.arrival_ns) / 1e6,
            skip_level=option.level,
            skipped_layers=option.skipped_layers,
            tokens=len(state.generated),
            deadline_ms=incoming.deadline_ms,
            deadline_met=error is None and in_time,
            error=error,
            escalations=request.escalations,
            compute_ms=sum(t.duration_ns for t in state.timings) / 1e6,
            expected_accuracy=option.accuracy,
            output=spec.kind,
            line=None if error else answer.line,
            action_ms=action_ms,
            first_token_ms=first_token_ms,
            line_tokens=answer.line_tokens,
            late_tokens=incoming.late_tokens,
            warnings=incoming.request.warnings,
        )
        self.scheduler.finish(request)
        rate = self.headroom_rate()
        if request.alone and error is None and 0.0 < rate < 1.0 and spec.kind == "choice":
            # a request that never waited behind another shows which share of the predicted
            # headroom dispatch really gets: its compute over (its wall time x headroom rate)
            wall_ns = now_ns - request.arrival_ns
            self.scheduler.observe_usable_fraction(decision.compute_ms * 1e6 / (wall_ns * rate))
        self._counters["relevels"] += self.scheduler.relevel_waiting(now_ns, self.headroom_rate())
        self._decisions.append(decision)
        self._done.append(decision)
        if incoming.request.callback is not None:
            incoming.request.callback(decision)
