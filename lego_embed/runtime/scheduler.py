"""The headroom-maximizing scheduler: EDF queue, skip-level choice and gap-fitted dispatch.

It decides, and only it decides, which request runs next, at which skip level, and whether its
next subtask may start now. It never runs anything: the Runtime's worker asks `next_dispatch`
and runs the returned requests' next subtask through the executor, then reports the measured
time back with `record`. Policies:
- `lego`: subtasks start only in a gap their predicted duration (plus a margin) fits; in the
  inter-frame gap a slice of consecutive subtasks (coarse), in intra-frame gaps one subtask (the
  executor's finest unit: attention / FFN block in prefill, one layer in decode); the skip level is
  the smallest whose predicted cost fits the predicted headroom before the deadline, re-checked and
  escalated at every decode step. A level chosen afresh (at admission, for a request that has not
  started, or by an escalation) is never below `level_floor`: the runtime's window-level choice, the
  smallest level whose sustainable rate covers the demand (a request's own choice sees the work
  queued now, not the requests that will arrive before its deadline); a started request on time
  keeps its level. A streamed line is a sequence of deadlines, one per token (`retarget`): after
  each line token the request's deadline moves to the next token's, EDF re-orders, and the level is
  escalated if that token would be late. When the next subtask is a whole FFN block that does not
  fit the rest of the gap, a slice of it (1/2 or 1/4 of its intermediate dimension) that does fit
  runs instead (`split_ffn`), so the gap's tail is not wasted. Requests at the same point of a pass
  run as one batched subtask. While compute is scarce (`compute_scarce`: demand above the full
  model's sustainable rate, set by the runtime each window) batches are kept whole: a batch that
  does not fit the rest of a gap waits rather than split (its members would never batch again in
  that pass), and waiting requests whose prompts would batch share one level (the smallest at which
  they all fit, batched). With compute to spare, the most urgent part of a batch that fits runs at
  once, at each request's own level (waiting for a batch would only cost latency and, through the
  backlog, accuracy). With `borrow_frame_slack` (off by default), while compute is scarce, an
  inter-frame gap's end is moved out by the next frame's slack (`OpenGap.slack_ns`), so its last
  subtask may run into the next frame's first pass as far as that frame can start late and still end
  by its vsync.
- `free`: start whenever there is work (plain co-location); full model.
- `inter_frame`: start only between frame_end and the next frame_begin (Pilotfish-style),
  without a fit check; full model.
- `static_skip`: one fixed skip level; a fixed slice of compute per inter-frame gap.
When the engine has sent no event for `engine_silence_ms` while in a gap (window minimised, a
debugger paused between frames), there is no renderer to protect and every policy runs freely;
inside a reported pass (pass_begin, no pass_end yet: a hitch) the engine is busy however long it
stays silent, so only `free` runs there. Requests are never dropped: a request that cannot make
its deadline even at the largest level runs anyway and is reported as a miss.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from lego_embed.model.executor import Executor, RequestState, batch_key
from lego_embed.model.layer_plan import AdaptorStep, LayerPlan
from lego_embed.model.profile import CostProfile
from lego_embed.model.subtask import DECODE, PREFILL, Subtask, SubtaskKind
from lego_embed.runtime.headroom import OpenGap

POLICIES = ("lego", "free", "inter_frame", "static_skip")
COST_ALPHA = 0.2
AGGREGATE_REFRESH_RECORDS = 16
"""Measurements after which the cost model's whole-pass and whole-request predictions are
recomputed: level choices ask them many times per admission, and one measurement moves an
estimate by only COST_ALPHA of its error (a new subtask shape refreshes them at once)."""
CLIP_DEVIATIONS = 4.0
CLIP_FLOOR_FRACTION = 0.25
USABLE_ALPHA = 0.3
DEFAULT_SUBTASK_NS = 200_000


@dataclass(frozen=True)
class LevelOption:
    """One skip level the scheduler may pick: its layer plan and expected decision accuracy."""

    level: int
    plan: LayerPlan
    accuracy: float | None = None

    @property
    def skipped_layers(self) -> int:
        return self.plan.skipped_layers


SPLIT_PARTS = (2, 4)
# a dispatch decision's `_group_key` of every queued request, by request id
GroupKeys = dict[int, tuple[int, tuple] | None]


def cost_key(subtask: Subtask) -> tuple[str, str, int]:
    """Subtasks of one kind and phase with query tokens in the same power-of-2 bucket; FFN
    slices by their share of the block (`ffn_slice/2`: a half)."""
    kind = subtask.kind.value
    if subtask.kind is SubtaskKind.FFN_SLICE:
        kind = f"{kind}/{subtask.parts}"
    return kind, subtask.phase, max(subtask.tokens, 1).bit_length()


@dataclass
class _CostEstimate:
    mean_ns: float
    deviation_ns: float

    def update(self, duration_ns: int) -> None:
        """EWMA of mean and absolute deviation; a sample far above the estimate (a subtask
        preempted by another process) counts as at most mean + CLIP_DEVIATIONS deviations
        (deviation at least CLIP_FLOOR_FRACTION of the mean), so one outlier cannot make the
        subtask look too long for every gap, while a lasting rise still moves the mean."""
        spread = max(self.deviation_ns, CLIP_FLOOR_FRACTION * self.mean_ns)
        duration_ns = min(duration_ns, self.mean_ns + CLIP_DEVIATIONS * spread)
        self.deviation_ns += COST_ALPHA * (abs(duration_ns - self.mean_ns) - self.deviation_ns)
        self.mean_ns += COST_ALPHA * (duration_ns - self.mean_ns)


class CostModel:
    """Predicted duration (ns) of each subtask: the cost profile, corrected online.

    Starts from a profile (`{(kind, phase, token bucket): ns}`, e.g. measured by the runtime's
    warm-up or `lego-embed profile`) and replaces it with an EWMA of measured durations as they
    arrive; `predict_ns` adds `deviations` times the EWMA absolute deviation, so a noisy subtask
    is predicted conservatively. Unseen keys fall back to the same kind's nearest bucket, scaled
    by tokens, then to DEFAULT_SUBTASK_NS. A subtask's prediction is remembered until its cost
    key is measured again (one predicted from others' until any measurement); whole-pass and
    whole-request predictions are recomputed every AGGREGATE_REFRESH_RECORDS measurements.
    """

    def __init__(self, profile_ns: dict[tuple[str, str, int], float] | None = None,
                 deviations: float = 2.0) -> None:
        self.deviations = deviations
        self._estimates: dict[tuple[str, str, int], _CostEstimate] = {
            key: _CostEstimate(float(ns), 0.0) for key, ns in (profile_ns or {}).items()
        }
        # predictions by cost key, then deviations; `_derived`: keys with no estimate of their
        # own, predicted from others' (cleared at every measurement, the rest only at theirs)
        self._cache: dict[tuple[str, str, int], dict[float, float]] = {}
        self._derived: set[tuple[str, str, int]] = set()
        self._pass_cache: dict[tuple[int, str, int], float] = {}
        self.request_cache: dict[tuple[int, ...], float] = {}  # for Scheduler.remaining_cost_ns
        self._records_since_refresh = 0

    @classmethod
    def from_profile(cls, profile: CostProfile, deviations: float = 2.0) -> CostModel:
        """Seeded from a `lego-embed profile` CostProfile (median us per subtask shape; entries
        falling in one token bucket are averaged)."""
        grouped: dict[tuple[str, str, int], list[float]] = {}
        for entry in profile.entries:
            subtask = Subtask(SubtaskKind(entry.kind), entry.phase, 0, 0, entry.tokens,
                              entry.context_tokens)
            grouped.setdefault(cost_key(subtask), []).append(entry.median_us * 1000.0)
        return cls({key: sum(v) / len(v) for key, v in grouped.items()}, deviations)

    def copy(self) -> CostModel:
        """An independent copy (estimates and deviations), e.g. to restore after a reset."""
        clone = CostModel(deviations=self.deviations)
        clone._estimates = {
            key: _CostEstimate(e.mean_ns, e.deviation_ns) for key, e in self._estimates.items()
        }
        return clone

    def record(self, subtask: Subtask, duration_ns: int) -> None:
        """Learns one measured duration (ns); a negative or non-finite one is no measurement."""
        if not math.isfinite(duration_ns) or duration_ns < 0:
            return
        key = cost_key(subtask)
        estimate = self._estimates.get(key)
        self._records_since_refresh += 1
        if estimate is None:
            self._estimates[key] = _CostEstimate(float(duration_ns), duration_ns * 0.25)
            self._records_since_refresh = AGGREGATE_REFRESH_RECORDS
            self._cache.clear()
        else:
            estimate.update(duration_ns)
            self._cache.pop(key, None)
            for derived in self._derived:
                self._cache.pop(derived, None)
        self._derived.clear()
        if self._records_since_refresh >= AGGREGATE_REFRESH_RECORDS:
            self._records_since_refresh = 0
            self._pass_cache.clear()
            self.request_cache.clear()

    def predict_ns(self, subtask: Subtask, deviations: float | None = None) -> float:
        """Conservative duration for gap fitting: mean + `deviations` (default: the model's)
        EWMA deviations. `deviations=0` gives the mean, for sums over many subtasks."""
        deviations = self.deviations if deviations is None else deviations
        key = cost_key(subtask)
        by_deviations = self._cache.setdefault(key, {})
        cached = by_deviations.get(deviations)
        if cached is not None:
            return cached
        estimate = self._estimates.get(key)
        if estimate is not None:
            value = estimate.mean_ns + deviations * estimate.deviation_ns
        else:
            self._derived.add(key)
            if subtask.kind is SubtaskKind.FFN_SLICE:  # unmeasured: its share of the block
                whole = Subtask(SubtaskKind.FFN, subtask.phase, subtask.first_layer,
                                subtask.last_layer, subtask.tokens, subtask.context_tokens)
                value = self.predict_ns(whole, deviations) / subtask.parts
            else:
                same_kind = [(k, e) for k, e in self._estimates.items() if k[:2] == key[:2]]
                if same_kind:
                    near_key, near = min(same_kind, key=lambda item: abs(item[0][2] - key[2]))
                    scale = 2.0 ** max(key[2] - near_key[2], 0)
                    value = (near.mean_ns + deviations * near.deviation_ns) * scale
                else:
                    value = float(DEFAULT_SUBTASK_NS)
        by_deviations[deviations] = value
        return value

    def profile_ns(self) -> dict[str, float]:
        """Current mean estimates, keyed `kind/phase/bucket`, for stats and reports."""
        return {"/".join(map(str, k)): e.mean_ns for k, e in dict(self._estimates).items()}

    def pass_cost_ns(self, plan: LayerPlan, phase: str, tokens: int, context: int) -> float:
        """Predicted mean duration of one whole pass (prefill chunk or decode step) under
        `plan` (means: over dozens of subtasks the deviations average out). Cached until the
        next measurement."""
        key = (id(plan), phase, max(tokens, 1).bit_length())
        cached = self._pass_cache.get(key)
        if cached is None:
            cached = self._pass_cost_ns(plan, phase, tokens, context)
            self._pass_cache[key] = cached
        return cached

    def _pass_cost_ns(self, plan: LayerPlan, phase: str, tokens: int, context: int) -> float:
        def one(kind: SubtaskKind, first: int = -1, last: int = -1) -> float:
            query_tokens = 1 if kind is SubtaskKind.HEAD else tokens  # the head reads one position
            subtask = Subtask(kind, phase, first, last, query_tokens, context)
            return self.predict_ns(subtask, deviations=0.0)

        layer_kinds = (
            (SubtaskKind.ATTENTION, SubtaskKind.FFN) if phase == PREFILL else (SubtaskKind.LAYER,)
        )
        per_layer = sum(one(kind, 0, 0) for kind in layer_kinds)
        adaptor = one(SubtaskKind.ADAPTOR, 0, 0)
        total = one(SubtaskKind.EMBED) if phase == PREFILL else 0.0
        total += one(SubtaskKind.HEAD)
        for step in plan.steps:
            total += adaptor if isinstance(step, AdaptorStep) else per_layer
        return total


@dataclass(eq=False)
class ScheduledRequest:
    """A request inside the scheduler: executor state, deadline (monotonic ns), chosen level.

    `expected_tokens` is the most tokens generated by the time `deadline_ns` is due (the action
    trie's depth; for a line, up to its next token); `payload` is whatever the runtime attaches
    (the prepared request, the callbacks). `level_changes` counts per-token level choices that
    changed the level. `queued`: it is in the scheduler's queue.
    """

    request_id: int
    npc_id: str
    state: RequestState
    arrival_ns: int
    deadline_ns: int
    expected_tokens: int
    level: int = 0
    escalations: int = 0
    payload: Any = None
    alone: bool = False
    level_changes: int = 0
    queued: bool = False

    def __lt__(self, other: ScheduledRequest) -> bool:
        return (self.deadline_ns, self.request_id) < (other.deadline_ns, other.request_id)


@dataclass(frozen=True)
class Dispatch:
    """Run the next subtask of `requests` (several: one batched subtask), up to
    `max_subtasks` times while the gap lasts (coarse slices in the inter-frame gap)."""

    requests: tuple[ScheduledRequest, ...]
    predicted_ns: float
    gap_end_ns: int | None
    max_subtasks: int = 1
    split: bool = False


@dataclass
class SchedulerConfig:
    """Scheduler knobs. Times in ns unless named otherwise; fractions 0..1.

    margin_ns / margin_fraction: a subtask starts only if predicted * (1 + margin_fraction) +
    margin_ns fits the rest of the gap. usable_fraction: share of predicted headroom the
    skip-level choice counts on at first (dispatch granularity wastes the rest); then learned
    online (`observe_usable_fraction`). static_level and
    static_slice_ns: the static_skip policy's fixed level and compute per inter-frame gap.
    fill_gaps: when the first request's subtask does not fit, run another request's that does.
    batching / max_batch: run the same subtask of up to `max_batch` same-level requests as one
    batched forward (decode steps; prefill of equal-length prompts), shrunk to what fits a gap.
    split_ffn: run a slice of an FFN block that does not fit the rest of a gap whole.
    whole_batches: while compute is scarce, a batch runs whole or waits (never a part of it,
    unless it cannot fit even a whole inter-frame gap), and waiting requests whose prompts would
    batch share one level. borrow_frame_slack: `lego`, while compute is scarce, fits work in an
    inter-frame gap against the gap's end plus the next frame's slack (`OpenGap.slack_ns`): a
    subtask may run into the next frame's first pass by as much as that frame can start late
    and still end by its vsync.
    """

    policy: str = "lego"
    margin_ns: int = 150_000
    margin_fraction: float = 0.1
    usable_fraction: float = 0.6
    edf: bool = True
    batching: bool = True
    static_level: int | None = None
    static_slice_ns: int = 4_000_000
    engine_silence_ns: int = 500_000_000
    fill_gaps: bool = True
    max_batch: int = 4
    split_ffn: bool = True
    whole_batches: bool = True
    borrow_frame_slack: bool = False


class Scheduler:
    """EDF queue + skip-level choice + gap-fit dispatch (see the module docstring).

    `levels` are the available skip levels, level 0 (full model) first. Not thread-safe: the
    runtime's worker thread owns it.
    """

    def __init__(
        self,
        executor: Executor,
        levels: Sequence[LevelOption],
        config: SchedulerConfig | None = None,
        cost_model: CostModel | None = None,
    ) -> None:
        self.executor = executor
        self.levels = list(levels)
        self.config = config or SchedulerConfig()
        self.cost = cost_model or CostModel()
        self.usable_fraction = self.config.usable_fraction
        self._queue: list[ScheduledRequest] = []  # in dispatch order: by deadline (edf) or FIFO
        self._static_used_ns = 0
        self._static_gap_start_ns: int | None = None
        self.compute_scarce = False  # demand above the full model's sustainable rate (runtime)
        self.level_floor = 0  # `lego`: the smallest level a request may take now (runtime)

    @property
    def keeps_batches_whole(self) -> bool:
        """Whether batches are kept whole and waiting levels aligned now (`whole_batches`
        while compute is scarce)."""
        return self.config.whole_batches and self.compute_scarce

    # ------------------------------------------------------------------ queue
    @property
    def pending(self) -> list[ScheduledRequest]:
        return sorted(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def admit(self, request: ScheduledRequest, now_ns: int, headroom_rate: float) -> None:
        """Queues a request and picks its skip level (smallest that fits, see module doc)."""
        request.alone = not self._queue
        request.level = self.choose_level(request, now_ns, headroom_rate)
        self._apply_level(request)
        request.queued = True
        bisect.insort(self._queue, request) if self.config.edf else self._queue.append(request)
        self._align_waiting_levels(now_ns, headroom_rate)

    def finish(self, request: ScheduledRequest) -> None:
        self._queue.remove(request)
        request.queued = False

    def _head(self) -> ScheduledRequest | None:
        """The request to serve first: earliest deadline (edf) or first come."""
        return self._queue[0] if self._queue else None

    def _ahead(self, request: ScheduledRequest) -> list[ScheduledRequest]:
        if self.config.edf:
            return self._queue[:bisect.bisect_left(self._queue, request)]
        return self._queue[: self._queue.index(request)] if request in self._queue else self._queue

    # ------------------------------------------------------------------ cost
    def remaining_cost_ns(self, request: ScheduledRequest, level: int | None = None,
                          answer_tokens: int | None = None) -> float:
        """Predicted compute left for the request at `level` (default: its current level)
        until it has generated `answer_tokens` (default: its `expected_tokens`). Remembered in the
        cost model's `request_cache` (emptied with its other caches at every measurement) under
        the request's progress: level choices ask it for every request queued ahead of every
        waiting one, many times per admission."""
        level = request.level if level is None else level
        if answer_tokens is None:
            answer_tokens = request.expected_tokens
        state = request.state
        key = (request.request_id, level, id(state.plan), state.cursor,
               -1 if state.program is None else len(state.program), len(state.pending_ids),
               state.position, len(state.generated), answer_tokens)
        cost = self.cost.request_cache.get(key)
        if cost is None:
            cost = self.cost.request_cache[key] = self._remaining_cost_ns(
                request, level, answer_tokens)
        return cost

    def _remaining_cost_ns(self, request: ScheduledRequest, level: int,
                           answer_tokens: int) -> float:
        state = request.state
        plan = self.levels[level].plan
        cost = 0.0
        if state.program is not None and state.cursor:
            cost += sum(
                self.cost.predict_ns(p.subtask, 0.0) for p in state.program[state.cursor:]
            )
            in_prefill = state.program[0].subtask.phase == PREFILL
        else:
            in_prefill = bool(state.pending_ids)
            if in_prefill:
                tokens = len(state.pending_ids)
                cost += self.cost.pass_cost_ns(plan, PREFILL, tokens, state.position + tokens)
        generated = len(state.generated) + (1 if in_prefill else 0)
        decode_steps = max(answer_tokens - max(generated, 1), 0)
        if decode_steps:
            cost += decode_steps * self.decode_step_ns(level)
        return cost

    def decode_step_ns(self, level: int) -> float:
        """Predicted compute (ns) of one decode step at `level` (the cost model's estimates
        do not depend on the context length)."""
        return self.cost.pass_cost_ns(self.levels[level].plan, DECODE, 1, 1)

    def _prefill_peers(self) -> Counter[tuple[int, int]]:
        """The queued requests that have not started, by (level, prompt tokens left): whose
        prefills dispatch batches (see shared_cost_ns). Counted once per decision, not once
        per request asked about."""
        return Counter((r.level, len(r.state.pending_ids)) for r in self._queue
                       if not r.state.timings and r.state.pending_ids)

    def shared_cost_ns(self, request: ScheduledRequest, level: int | None = None,
                       peers: Counter[tuple[int, int]] | None = None,
                       answer_tokens: int | None = None) -> float:
        """The request's remaining compute at `level` (default: its own) when its prefill is
        batched with the other not-yet-started requests queued at that level with prompts of
        the same length (as dispatch will run them, up to max_batch): its share of the batched
        prefill's predicted cost, plus its decode steps. Requests that started, and runs
        without batching, pay their whole remaining cost. `peers`: `_prefill_peers()` when the
        caller has it. `answer_tokens`: as in `remaining_cost_ns`."""
        level = request.level if level is None else level
        cost = self.remaining_cost_ns(request, level, answer_tokens)
        state = request.state
        if not self.config.batching or state.timings or not state.pending_ids:
            return cost
        tokens = len(state.pending_ids)
        peers = self._prefill_peers() if peers is None else peers
        others = peers[(level, tokens)] - (request.queued and request.level == level)
        batch = min(1 + others, self.config.max_batch)
        if batch == 1:
            return cost
        plan = self.levels[level].plan
        context = state.position + tokens
        alone = self.cost.pass_cost_ns(plan, PREFILL, tokens, context)
        together = self.cost.pass_cost_ns(plan, PREFILL, tokens * batch, context) / batch
        return cost - alone + min(alone, together)

    def _work_ahead_ns(self, request: ScheduledRequest, level: int | None = None,
                       answer_tokens: int | None = None) -> float:
        """Compute queued ahead of the request: each one's shared cost at its own level, or at
        `level` when given, until each has `answer_tokens` (default its own expected tokens; with
        both, the best case of everyone at the largest level answering at its first token)."""
        peers = self._prefill_peers()
        return sum(self.shared_cost_ns(r, level, peers, answer_tokens)
                   for r in self._ahead(request))

    def _fit_level(self, request: ScheduledRequest, available_ns: float, start: int) -> int:
        """The smallest level from `start` at which the request's shared cost fits
        `available_ns`; the largest level if none does."""
        peers = self._prefill_peers()
        for level in range(start, len(self.levels)):
            if self.shared_cost_ns(request, level, peers) <= available_ns:
                return level
        return len(self.levels) - 1

    def _work_ahead_of_each(self, peers: Counter[tuple[int, int]]) -> dict[int, float]:
        """`_work_ahead_ns` of every queued request (by request id) in one pass over the queue
        in dispatch order."""
        ahead, total = {}, 0.0
        for request in self._queue:
            ahead[request.request_id] = total
            total += self.shared_cost_ns(request, None, peers)
        return ahead

    def _usable_ns(self, request: ScheduledRequest, now_ns: int, headroom_rate: float) -> float:
        """Headroom the level choice counts on before the request's deadline."""
        return (request.deadline_ns - now_ns) * headroom_rate * self.usable_fraction

    def _available_ns(self, request: ScheduledRequest, now_ns: int, headroom_rate: float) -> float:
        return self._usable_ns(request, now_ns, headroom_rate) - self._work_ahead_ns(request)

    def can_finish(self, request: ScheduledRequest, now_ns: int, headroom_rate: float) -> bool:
        """Whether the request could still finish by its deadline in the best case: it and
        every request queued ahead of it at the largest level, filling all of the predicted
        headroom before its deadline (no usable-fraction discount), each answered by its first
        token (a combat decision is one prefill and one head; the level choice's margin of
        planned tokens is not counted here: on the simulated clock counting it shed requests
        that `static_skip` answered on time at the same level, docs/BENCHMARKS.md
        2026-11-30 16:00). False means a miss is all but certain, whatever the level choice."""
        largest = len(self.levels) - 1
        time_left_ns = request.deadline_ns - now_ns
        usable_ns = time_left_ns * headroom_rate
        ahead_ns = self._work_ahead_ns(request, largest, answer_tokens=1)
        return self.shared_cost_ns(request, largest, answer_tokens=1) <= usable_ns - ahead_ns

    def choose_level(self, request: ScheduledRequest, now_ns: int, headroom_rate: float) -> int:
        """The level a new request starts at: the policy's fixed level, or for `lego` the
        smallest, from the window's `level_floor` up, whose predicted cost fits the usable
        predicted headroom before its deadline after the work queued ahead of it (the largest
        level if none fits)."""
        policy = self.config.policy
        if policy == "static_skip":
            return self.static_level
        if policy != "lego":
            return 0
        available_ns = self._available_ns(request, now_ns, headroom_rate)
        return self._fit_level(request, available_ns, self.level_floor)

    @property
    def static_level(self) -> int:
        configured = self.config.static_level
        return len(self.levels) - 1 if configured is None else min(configured, len(self.levels) - 1)

    def recheck(self, request: ScheduledRequest, now_ns: int, headroom_rate: float) -> bool:
        """Between decode steps: escalates the level when the deadline is at risk (True if so),
        to a level at or above the window's floor."""
        if self.config.policy != "lego" or request.level == len(self.levels) - 1:
            return False
        if not request.state.at_pass_start or request.state.pending_ids:
            return False
        available_ns = self._available_ns(request, now_ns, headroom_rate)
        if self.remaining_cost_ns(request) <= available_ns:
            return False
        level = self._fit_level(request, available_ns, max(request.level + 1, self.level_floor))
        if level == request.level:
            return False
        request.level = level
        request.escalations += 1
        self._apply_level(request)
        return True

    def relevel_waiting(self, now_ns: int, headroom_rate: float) -> int:
        """Re-chooses the level of every request that has not started yet, in EDF order, against
        the current backlog and headroom (nothing is lost: no subtask of theirs has run).
        Returns how many changed level."""
        if self.config.policy != "lego":
            return 0
        changed = 0
        for request in sorted(self._queue):
            state = request.state
            if state.timings or not state.at_pass_start:
                continue
            level = self.choose_level(request, now_ns, headroom_rate)
            if level != request.level:
                request.level = level
                self._apply_level(request)
                changed += 1
        return changed + self._align_waiting_levels(now_ns, headroom_rate)

    def _align_waiting_levels(self, now_ns: int, headroom_rate: float) -> int:
        """`lego` with batching: the requests that have not started and whose first subtasks
        would batch (prompts of one length) take one level (`_common_level`), so that dispatch
        prefills them as one batch instead of one batch per level. Returns how many changed."""
        if self.config.policy != "lego" or not (self.config.batching and self.keeps_batches_whole):
            return 0
        groups: dict[tuple, list[ScheduledRequest]] = {}
        for request in self._queue:
            state = request.state
            if state.timings or not state.at_pass_start or not state.pending_ids:
                continue
            subtask = self.executor.peek(state)
            if subtask is not None:
                groups.setdefault(batch_key(subtask), []).append(request)
        changed = 0
        for members in groups.values():
            if len(members) < 2:
                continue
            level = self._common_level(members, now_ns, headroom_rate)
            for member in members:
                if member.level != level:
                    member.level = level
                    self._apply_level(member)
                    changed += 1
        return changed

    def _common_level(
        self, members: list[ScheduledRequest], now_ns: int, headroom_rate: float
    ) -> int:
        """The smallest level at which every member, batched with the others at that level,
        fits the usable headroom before its deadline after the work ahead of it; the largest
        of their own levels when no level fits them all (overload: batching is what helps)."""
        own = [member.level for member in members]
        chosen = max(own)
        for level in range(self.level_floor, len(self.levels)):
            for member in members:
                member.level = level
            peers = self._prefill_peers()
            ahead = self._work_ahead_of_each(peers)
            if all(self.shared_cost_ns(member, level, peers) <= self._usable_ns(
                    member, now_ns, headroom_rate) - ahead[member.request_id]
                   for member in members):
                chosen = level
                break
        for member, level in zip(members, own, strict=True):
            member.level = level
        return chosen

    def retarget(self, request: ScheduledRequest, deadline_ns: int, expected_tokens: int,
                 now_ns: int, headroom_rate: float) -> bool:
        """A line token was made: the request's next deadline is the next token's. Re-orders the
        queue and, for `lego`, checks the level against that token's deadline: raised when the
        token would be late at the current one, never lowered within a request (the spans nest,
        so a layer skipped for earlier tokens is never run again over positions it lacks); the
        window's floor does not raise a token that is on time.
        True if the level changed."""
        request.deadline_ns = deadline_ns
        request.expected_tokens = expected_tokens
        if self.config.edf:
            self._queue.sort()
        if self.config.policy != "lego" or not request.state.at_pass_start:
            return False
        available_ns = self._available_ns(request, now_ns, headroom_rate)
        level = self._fit_level(request, available_ns, request.level)
        if level == request.level:
            return False
        request.level = level
        request.level_changes += 1
        self._apply_level(request)
        return True

    def pass_boundary(self, request: ScheduledRequest) -> None:
        """Between two passes: the plan for the next one (the full model while the prompt's
        static part is prefilled, so its KV can be kept for every layer)."""
        self._apply_level(request)

    def _apply_level(self, request: ScheduledRequest) -> None:
        state = request.state
        if state.at_pass_start:
            level = 0 if state.in_static_part else request.level
            if state.plan is not self.levels[level].plan:
                self.executor.set_layer_plan(state, self.levels[level].plan)

    # ------------------------------------------------------------------ dispatch
    def _batch(self, head: ScheduledRequest, keys: GroupKeys) -> tuple[ScheduledRequest, ...]:
        key = keys.get(head.request_id)
        if not self.config.batching or key is None:
            return (head,)
        batch = [head]
        for other in self._queue:
            if len(batch) == self.config.max_batch:
                break
            if other is not head and keys[other.request_id] == key:
                batch.append(other)
        return tuple(batch)

    def _group_key(self, request: ScheduledRequest) -> tuple[int, tuple] | None:
        """What requests share to batch their next subtask (`_batch`): the layer plan and the
        subtask's batch key; None when it has no next subtask."""
        subtask = self.executor.peek(request.state)
        return None if subtask is None else (id(request.state.plan), batch_key(subtask))

    def _group_keys(self) -> GroupKeys:
        """`_group_key` of every queued request by request id, once per dispatch decision
        (empty when batching is off)."""
        if not self.config.batching or self.config.max_batch < 2:
            return {}
        return {r.request_id: self._group_key(r) for r in self._queue}

    def _fitting_batch(
        self, batch: tuple[ScheduledRequest, ...], now_ns: int, gap: OpenGap
    ) -> tuple[tuple[ScheduledRequest, ...], float] | None:
        """`batch` with its predicted duration when that fits the rest of the gap; else None,
        or its largest most-urgent part that fits when the whole could not fit even a whole
        inter-frame gap like this one. A batch is a group of requests at the same point of
        the same pass: running part of it would put its members a subtask apart for the rest
        of the pass, never batched again, so the group waits for room rather than split
        (another request's subtask may fill the gap meanwhile, see `_fill`)."""
        predicted_ns = self.predicted_ns(batch)
        if self.fits(predicted_ns, now_ns, gap.end_estimate_ns):
            return batch, predicted_ns
        if len(batch) > 1 and self.keeps_batches_whole and (
            not gap.inter_frame or self.fits(predicted_ns, gap.start_ns, gap.end_estimate_ns)
        ):
            return None
        for size in range(len(batch) - 1, 0, -1):
            predicted_ns = self.predicted_ns(batch[:size])
            if self.fits(predicted_ns, now_ns, gap.end_estimate_ns):
                return batch[:size], predicted_ns
        return None

    def predicted_ns(self, batch: tuple[ScheduledRequest, ...]) -> float:
        subtask = self.executor.peek(batch[0].state)
        assert subtask is not None
        if len(batch) > 1:
            subtask = Subtask(subtask.kind, subtask.phase, subtask.first_layer,
                              subtask.last_layer, subtask.tokens * len(batch),
                              subtask.context_tokens)
        return self.cost.predict_ns(subtask)

    def fits(self, predicted_ns: float, now_ns: int, gap_end_ns: int) -> bool:
        """Gap-fit rule: predicted * (1 + margin_fraction) + margin_ns <= rest of the gap."""
        needed = predicted_ns * (1.0 + self.config.margin_fraction) + self.config.margin_ns
        return now_ns + needed <= gap_end_ns

    def engine_silent(self, now_ns: int, gap: OpenGap | None, last_event_ns: int | None) -> bool:
        """Whether there is no renderer to protect now: the engine never reported, or has sent
        no event for `engine_silence_ns` while in a gap (inside a pass it is busy, however
        long it stays silent)."""
        return last_event_ns is None or (
            gap is not None and now_ns - last_event_ns > self.config.engine_silence_ns
        )

    def next_dispatch(
        self, now_ns: int, gap: OpenGap | None, last_event_ns: int | None
    ) -> Dispatch | None:
        """What to run now, or None to wait for the next engine event. `gap` is the open gap
        (None inside a pass); `last_event_ns` when the engine's last event arrived (None: the
        engine never reported, nothing to protect)."""
        head = self._head()
        if head is None:
            return None
        keys = self._group_keys()
        batch = self._batch(head, keys)
        predicted_ns = self.predicted_ns(batch)
        policy = self.config.policy
        if policy == "free" or self.engine_silent(now_ns, gap, last_event_ns):
            return Dispatch(batch, predicted_ns, None, 1)
        if gap is None:
            return None
        if policy == "inter_frame":
            return Dispatch(batch, predicted_ns, None, 1) if gap.inter_frame else None
        if policy == "static_skip":
            if not gap.inter_frame:
                return None
            if self._static_gap_start_ns != gap.start_ns:
                self._static_gap_start_ns, self._static_used_ns = gap.start_ns, 0
            if self._static_used_ns >= self.config.static_slice_ns:
                return None
            return Dispatch(batch, predicted_ns, None, 1)
        if (self.config.borrow_frame_slack and self.compute_scarce and gap.inter_frame
                and gap.slack_ns > 0):
            gap = replace(gap, end_estimate_ns=gap.end_estimate_ns + gap.slack_ns)
        fitting = self._fitting_batch(batch, now_ns, gap)
        if fitting is not None:
            slice_subtasks = 64 if gap.inter_frame else 1
            return Dispatch(*fitting, gap.end_estimate_ns, slice_subtasks)
        if self.config.split_ffn and (len(batch) == 1 or not self.keeps_batches_whole):
            split = self._split_to_fit(head, now_ns, gap.end_estimate_ns)
            if split is not None:
                return split
        if not self.config.fill_gaps:
            return None
        return self._fill(head, now_ns, gap.end_estimate_ns, keys)

    def _split_to_fit(
        self, head: ScheduledRequest, now_ns: int, gap_end_ns: int
    ) -> Dispatch | None:
        """When the head's next subtask (not batched with others) is a whole FFN block that
        does not fit the rest of the gap, splits it into the fewest slices (SPLIT_PARTS) whose
        first fits; one slice runs."""
        subtask = self.executor.peek(head.state)
        if subtask is None or subtask.kind is not SubtaskKind.FFN:
            return None
        for parts in SPLIT_PARTS:
            piece = Subtask(SubtaskKind.FFN_SLICE, subtask.phase, subtask.first_layer,
                            subtask.last_layer, subtask.tokens, subtask.context_tokens, 0, parts)
            predicted_ns = self.cost.predict_ns(piece)
            if self.fits(predicted_ns, now_ns, gap_end_ns):
                self.executor.split_next(head.state, parts)
                return Dispatch((head,), predicted_ns, gap_end_ns, 1, split=True)
        return None

    def _fill(
        self, head: ScheduledRequest, now_ns: int, gap_end_ns: int, keys: GroupKeys
    ) -> Dispatch | None:
        """When the first request's next subtask does not fit the rest of the gap, the next
        subtask of the most urgent other request that does (e.g. another NPC's embedding or
        FFN block in a gap too short for an attention block); one subtask, then re-decide.
        Never one member of a batch (that would split its group, see `_fitting_batch`)."""
        grouped = Counter(k for k in keys.values() if k is not None)
        whole = self.keeps_batches_whole
        for other in self._queue:
            if other is head or (whole and grouped[keys.get(other.request_id)] > 1):
                continue
            predicted_ns = self.predicted_ns((other,))
            if self.fits(predicted_ns, now_ns, gap_end_ns):
                return Dispatch((other,), predicted_ns, gap_end_ns, 1)
        return None

    def observe_usable_fraction(self, fraction: float) -> None:
        """Learns which share of the predicted headroom dispatch really fills (the runtime
        measures it on requests that never waited behind another one, and on windows in which
        requests waited the whole time). A non-finite measurement is ignored."""
        if not math.isfinite(fraction):
            return
        fraction = min(max(fraction, 0.05), 1.0)
        self.usable_fraction += USABLE_ALPHA * (fraction - self.usable_fraction)

    def record(self, subtask: Subtask, duration_ns: int) -> None:
        """Feeds a measured subtask time back into the cost model (and the static slice)."""
        self.cost.record(subtask, duration_ns)
        self.note_run(duration_ns)

    def note_run(self, duration_ns: int) -> None:
        """Counts compute against the static slice without teaching the cost model (for a
        subtask whose time was inflated by sharing the device with rendering)."""
        self._static_used_ns += duration_ns
