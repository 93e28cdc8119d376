"""The Runtime: the game-facing API that runs NPC decisions in the renderer's idle gaps.

Threading model. The game (or an engine bridge) calls `on_event`, `request`, `poll` and
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
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lego_embed.errors import RuntimeConfigError
from lego_embed.model.executor import Executor, GreedySampler
from lego_embed.model.kv_cache import PrefixCache
from lego_embed.model.layer_plan import LayerPlan
from lego_embed.model.loading import LoadedModel
from lego_embed.model.profile import CostProfile
from lego_embed.npc.combat_task import random_situation
from lego_embed.npc.decider import PreparedDecision, prepare_decision
from lego_embed.npc.prompt import build_prompt, persona_prefix
from lego_embed.npc.state import validate_state
from lego_embed.runtime.events import PASS_BEGIN, EngineEvent, measured_on_gpu
from lego_embed.runtime.gpu_stats import nvml_stats
from lego_embed.runtime.headroom import HeadroomTracker, WindowHeadroom
from lego_embed.runtime.predictor import HeadroomPredictor
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
    """One finished NPC decision.

    action: the chosen action (None only when `error` says why). latency_ms: from `request()`
    to the answer. skip_level / skipped_layers: the level the request ended at and the layers
    it skipped. tokens: generated tokens. deadline_ms: the request's deadline (relative to the
    request); deadline_met: answered within it. escalations: skip-level raises mid-request.
    compute_ms: measured subtask time. expected_accuracy: the level's measured accuracy (0..1)
    from the skip bundle, when known.
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


@dataclass
class RuntimeConfig:
    """Runtime settings.

    policy: lego | free | inter_frame | static_skip (see scheduler). frame_budget_ms: the
    engine's frame period (60 FPS: 16.67). window_ms: execution window for headroom totals
    (one SLO period). margin_us / margin_fraction: dispatch margin. usable_fraction: share of
    predicted headroom the level choice relies on. edf / batching / prefix_reuse: the
    beyond-LEGO features (earliest deadline first, batched same-level subtasks: decode steps
    and equal-length prefills, persona prefix KV reuse). static_level / static_slice_ms: the
    static_skip policy. cpu_core: pin the worker thread to this core (CPU runs).
    record_timeline: keep (start_ns, end_ns, kind, batch) of every subtask in `Runtime.timeline`.
    warmup: measure the cost profile at start() (one request per level, and batches of
    2..max_batch requests when batching).
    constrained: decode with the action trie (default); False generates up to 16 free tokens
    (LEGO's shape) and accepts the answer only if its text is an allowed action. cost_profile:
    a `lego-embed profile` JSON that seeds the cost model (the warm-up and every measured
    subtask then correct it). prefix_min_tokens: reuse a persona prefix only if it is at least
    this long (a short prefix saves almost nothing, and attending over cached positions needs a
    mask, which made the bundled model's attention block 60% slower on CPU).
    cost_deviations / gap_deviations: how conservative predictions
    are (subtask cost: mean + k deviations; gap length: mean - k deviations).
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
        if self.cpu_core is not None and self.cpu_core not in os.sched_getaffinity(0):
            raise RuntimeConfigError(
                f"cpu_core {self.cpu_core} is not available; pick one of "
                f"{sorted(os.sched_getaffinity(0))}"
            )
        return self


@dataclass(frozen=True)
class _Incoming:
    request_id: int
    npc_id: str
    prepared: PreparedDecision
    arrival_ns: int
    deadline_ms: float
    callback: Callable[[Decision], None] | None


class Runtime:
    """Schedules NPC decisions into rendering headroom (see the module docstring).

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
        # GPU-measured passes arrive a frame or more late: they get their own tracker (the GPU's
        # idle gaps and headroom per window) and never drive live dispatch.
        self.gpu_tracker = HeadroomTracker(cfg.frame_budget_ms, cfg.window_ms)
        self.timeline: list[tuple[int, int, str, int]] = []
        self._events: deque[EngineEvent] = deque()
        self._gpu_events: deque[EngineEvent] = deque()
        self._incoming: deque[_Incoming] = deque()
        self._done: deque[Decision] = deque()
        self._decisions: list[Decision] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._prefixes: dict[tuple[int, ...], PrefixCache] = {}
        self._persona_ids: dict[str, list[int]] = {}
        self._last_event_ns: int | None = None
        self._window_busy_ns = 0
        self._window_backlogged = False
        self._counters = {
            "subtasks": 0, "batched_subtasks": 0, "prefix_hits": 0, "escalations": 0,
            "llm_busy_ns": 0, "errors": 0, "contended_subtasks": 0, "relevels": 0,
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
        subtasks without being woken, so it never takes the device from a starting pass.
        Events measured on the GPU (`measured_on_gpu`) only feed `gpu_tracker`."""
        if measured_on_gpu(event):
            self._gpu_events.append(event)
            return
        self._events.append(event)
        self._last_event_ns = event.t_ns
        if event.kind != PASS_BEGIN:
            self._wake.set()

    def request(
        self,
        npc_id: str,
        state: Mapping[str, Any],
        actions: Sequence[str],
        deadline_ms: float,
        callback: Callable[[Decision], None] | None = None,
    ) -> int:
        """Queues a decision and returns its request id. Validates the state and actions now
        (InvalidGameStateError / InvalidActionSetError); never waits for inference."""
        if not deadline_ms > 0:
            raise RuntimeConfigError(f"deadline_ms must be > 0, got {deadline_ms}")
        arrival_ns = time.monotonic_ns()
        prepared = prepare_decision(self.loaded.tokenizer, state, actions)
        request_id = next(self._ids)
        self._incoming.append(
            _Incoming(request_id, str(npc_id), prepared, arrival_ns, float(deadline_ms), callback)
        )
        self._wake.set()
        return request_id

    def poll(self) -> list[Decision]:
        """Decisions finished since the last poll, oldest first."""
        finished = []
        while self._done:
            finished.append(self._done.popleft())
        return finished

    def stats(self) -> dict[str, Any]:
        """Counters, latencies, headroom estimates, the cost profile and GPU stats (NVML)."""
        decisions = list(self._decisions)
        latencies = [d.latency_ms for d in decisions if d.action is not None]
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
            "llm_busy_ms": self._counters["llm_busy_ns"] / 1e6,
            "frames_seen": self.tracker.frames,
            "windows": len(windows),
            "last_window_headroom_ms": windows[-1].total_ms if windows else None,
            "predicted_window_headroom_ms": predicted,
            "usable_fraction": self.scheduler.usable_fraction,
            "slot_estimates_ms": {k: v.mean_ms for k, v in self.tracker.slots.items()},
            "gpu_frames_seen": self.gpu_tracker.frames,
            "gpu_window_headroom_ms": [w.total_ms for w in self.gpu_tracker.windows[-10:]],
            "gpu_slot_estimates_ms": {k: v.mean_ms for k, v in self.gpu_tracker.slots.items()},
            "cost_profile_ns": self.scheduler.cost.profile_ns(),
            "gpu": nvml_stats(),
        }

    # ------------------------------------------------------------------ worker
    def _warmup(self) -> None:
        tokenizer = self.loaded.tokenizer
        state = validate_state(random_situation(random.Random(0)))
        prompt_ids = tokenizer.encode(build_prompt(state))
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
        if self._window_backlogged and len(self.scheduler) and rate < 1.0:
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
        while self._gpu_events:
            self.gpu_tracker.on_event(self._gpu_events.popleft())

    def _admit(self, now_ns: int) -> None:
        while self._incoming:
            incoming = self._incoming.popleft()
            prepared = incoming.prepared
            prefix = None
            prefix_ids = self._prefix_ids(prepared)
            if self.config.prefix_reuse and prefix_ids:
                prefix = self._prefixes.get(prefix_ids)
                self._counters["prefix_hits"] += prefix is not None
            sampler = prepared.sampler if self.config.constrained else GreedySampler(
                self.loaded.tokenizer.eos_token_id, FREE_TEXT_TOKENS
            )
            state = self.executor.start(prepared.prompt_ids, sampler, prefix=prefix)
            request = ScheduledRequest(
                incoming.request_id, incoming.npc_id, state, incoming.arrival_ns,
                incoming.arrival_ns + round(incoming.deadline_ms * 1e6),
                sampler.max_new_tokens, payload=incoming,
            )
            self.scheduler.admit(request, now_ns, self.headroom_rate())

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
            if state.at_pass_start or state.finished:
                self._remember_prefix(request)
            if state.finished:
                self._complete(request, None)
                keep_going = False
            elif state.at_pass_start:
                keep_going = False
                escalated = self.scheduler.recheck(request, end_ns, self.headroom_rate())
                self._counters["escalations"] += escalated
        return keep_going

    def _action(self, prepared: PreparedDecision, generated: list[int]) -> str | None:
        if self.config.constrained:
            return prepared.sampler.action(generated)
        text = self.loaded.tokenizer.decode(generated, skip_special_tokens=True).strip()
        return text if text in prepared.sampler.trie.actions else None

    def _prefix_ids(self, prepared: PreparedDecision) -> tuple[int, ...]:
        """The prompt's static persona part: the tokens it shares with the encoded persona
        prefix (a tokenizer may encode the prefix's trailing blank as a token of its own)."""
        if prepared.prefix_tokens >= self.config.prefix_min_tokens:
            return tuple(prepared.prompt_ids[: prepared.prefix_tokens])
        key = prepared.state.persona
        static = self._persona_ids.get(key)
        if static is None:
            static = self.loaded.tokenizer.encode(persona_prefix(key))
            self._persona_ids[key] = static
        common = 0
        for ours, theirs in zip(prepared.prompt_ids, static, strict=False):
            if ours != theirs:
                break
            common += 1
        common = min(common, len(prepared.prompt_ids) - 1)
        if common < self.config.prefix_min_tokens:
            return ()
        return tuple(prepared.prompt_ids[:common])

    def _remember_prefix(self, request: ScheduledRequest) -> None:
        """After a full-model prefill, keeps the persona prefix's KV for the NPC's next requests."""
        prepared = request.payload.prepared
        state = request.state
        if not self.config.prefix_reuse or request.level != 0 or not state.generated:
            return
        prefix_ids = self._prefix_ids(prepared)
        if not prefix_ids or prefix_ids in self._prefixes:
            return
        layers = tuple(kv.truncated(len(prefix_ids)) for kv in state.kv)
        if all(len(layer) == len(prefix_ids) for layer in layers):
            self._prefixes[prefix_ids] = PrefixCache(prefix_ids, layers)

    def _complete(self, request: ScheduledRequest, error: str | None) -> None:
        now_ns = time.monotonic_ns()
        incoming: _Incoming = request.payload
        state = request.state
        action = None if error else self._action(incoming.prepared, state.generated)
        if action is None and error is None:
            error = "the answer is not one of the allowed actions"
        option = self.levels[request.level]
        decision = Decision(
            request_id=request.request_id,
            npc_id=request.npc_id,
            action=action,
            latency_ms=(now_ns - request.arrival_ns) / 1e6,
            skip_level=option.level,
            skipped_layers=option.skipped_layers,
            tokens=len(state.generated),
            deadline_ms=incoming.deadline_ms,
            deadline_met=error is None and now_ns <= request.deadline_ns,
            error=error,
            escalations=request.escalations,
            compute_ms=sum(t.duration_ns for t in state.timings) / 1e6,
            expected_accuracy=option.accuracy,
        )
        self.scheduler.finish(request)
        rate = self.headroom_rate()
        if request.alone and error is None and rate < 1.0:
            # a request that never waited behind another shows which share of the predicted
            # headroom dispatch really gets: its compute over (its wall time x headroom rate)
            wall_ns = now_ns - request.arrival_ns
            self.scheduler.observe_usable_fraction(decision.compute_ms * 1e6 / (wall_ns * rate))
        self._counters["relevels"] += self.scheduler.relevel_waiting(now_ns, self.headroom_rate())
        self._decisions.append(decision)
        self._done.append(decision)
        if incoming.callback is not None:
            incoming.callback(decision)
