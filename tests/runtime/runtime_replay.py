"""Deterministic runtime replays for tests: a ManualClock-driven Runtime fed timed deliveries.

A `Delivery` is what reaches the runtime at one instant of its clock: an engine event (whose own
timestamp may differ from the arrival: late, out of order) or a burst of requests. `replay`
moves the clock to each arrival, delivers, and lets the worker run until it is idle, ticking
the idle worker every `tick_ns` in between (as the worker thread wakes at least every 0.5 s)
and at every time it asks to be woken (`Runtime.next_wake_ns`: a fallback deadline, a silence
check), as the worker thread's timed wait would.
With a stepping clock the worker's own work takes time, and what arrived meanwhile is delivered
when it is idle again, late.
It records, independently of the runtime's own tracker, whether a pass was open at every
moment the worker ran (a pass_begin delivered and no pass_end / frame_end / frame_begin since).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from lego_embed.bench.simulated import SubtaskCosts
from lego_embed.model.loading import LoadedModel
from lego_embed.model.profile import CostEntry, CostProfile
from lego_embed.runtime.answers import Decision
from lego_embed.runtime.clock import ManualClock
from lego_embed.runtime.events import FRAME_BEGIN, FRAME_END, PASS_BEGIN, PASS_END, EngineEvent
from lego_embed.runtime.runtime import Runtime, RuntimeConfig
from lego_embed.skip.adaptor import AdaptorShape, SpanAdaptor
from lego_embed.skip.bundle import ModelIdentity, SkipBundle, SkipLevel
from lego_embed.skip.spans import Span
from lego_embed.tasks.combat.policy import ACTIONS, random_situation
from lego_embed.tasks.combat.request import combat_request

MS = 1_000_000
SECOND = 1_000_000_000


@dataclass(frozen=True)
class Delivery:
    """At `arrival_ns` on the runtime's clock: an engine event, and/or requests (deadlines ms) of
    `npc_id`; `options` are further `combat_request` arguments (output, fallback, supersede,
    on_token, ...)."""

    arrival_ns: int
    event: EngineEvent | None = None
    deadlines_ms: tuple[float, ...] = ()
    npc_id: str | None = None
    options: dict = field(default_factory=dict)


@dataclass
class ReplayResult:
    """What a replay saw: request ids issued, answers through callbacks and poll(), and the
    subtasks the worker started while a pass was open (by delivery order)."""

    issued: list[int] = field(default_factory=list)
    callback_answers: list[Decision] = field(default_factory=list)
    polled: list[Decision] = field(default_factory=list)
    subtasks_in_open_pass: list[tuple[int, str]] = field(default_factory=list)


class SteppingClock(ManualClock):
    """A ManualClock that also moves `step_ns` forward at every read: the runtime's own work
    takes simulated, deterministic time (0: an infinitely fast worker). `peek_ns` reads it
    without moving it."""

    def __init__(self, start_ns: int = 0, step_ns: int = 0) -> None:
        super().__init__(start_ns)
        self.step_ns = step_ns

    def now_ns(self) -> int:
        now = super().now_ns()
        self.advance(self.step_ns)
        return now

    def peek_ns(self) -> int:
        return super().now_ns()


def identity_bundle(loaded: LoadedModel, spans: Sequence[tuple[int, int]]) -> SkipBundle:
    """A skip bundle whose adaptors are fresh (identity: plain skipping) for the given spans."""
    hidden = loaded.args.hidden_size
    levels, adaptors = [], {}
    for level, (first, last) in enumerate(spans, start=1):
        shape = AdaptorShape(hidden, hidden)
        adaptor = SpanAdaptor(shape)
        adaptors[level] = adaptor
        levels.append(SkipLevel(level, Span(first, last), shape, adaptor.weight_bytes))
    return SkipBundle(ModelIdentity.of(loaded), levels, adaptors)


def flat_cost_profile(path: str, subtask_us: float = 300.0) -> str:
    """A hand-made cost profile (JSON at `path`) in which every subtask kind costs subtask_us
    at every token bucket: a starting cost model that outlier measurements on a busy machine
    cannot throw off (they are clipped against it). Returns the path."""
    kinds = ("embed", "attention", "ffn", "adaptor", "head", "layer")
    entries = [CostEntry(kind, phase, tokens, tokens, subtask_us, subtask_us, 1)
               for kind in kinds for phase in ("prefill", "decode")
               for tokens in (1, 2, 4, 8, 16, 32, 64, 128, 256)]
    CostProfile("test", "llama", "cpu", "float32", 0, 1, 0, 0, "", entries).save(path)
    return path


def flat_subtask_costs(subtask_us: float = 300.0, jitter: float = 0.0) -> SubtaskCosts:
    """Simulated-clock costs (`bench.simulated`) in which every subtask kind costs subtask_us
    at every token bucket; 200 us wake-up, 35 us turn."""
    kinds = ("embed", "attention", "ffn", "adaptor", "head", "layer")
    table = {f"{kind}/{phase}/{bucket}": subtask_us * 1000.0
             for kind in kinds for phase in ("prefill", "decode") for bucket in range(1, 10)}
    return SubtaskCosts(table, jitter=jitter, wake_us=200.0, turn_us=35.0)


def manual_runtime(
    loaded: LoadedModel, bundle: SkipBundle | None = None, start_ns: int = SECOND,
    step_ns: int = 0, **options,
) -> tuple[Runtime, SteppingClock]:
    """A Runtime on a SteppingClock, started without a worker thread (drive it with replay).
    No warm-up unless asked for: the cost model starts from defaults (0.2 ms a subtask)."""
    clock = SteppingClock(start_ns, step_ns)
    config = RuntimeConfig(**{"warmup": False, "record_timeline": True, **options})
    runtime = Runtime(loaded, bundle, config, clock=clock)
    runtime.start(thread=False)
    return runtime, clock


def replay(
    runtime: Runtime,
    clock: SteppingClock,
    deliveries: Sequence[Delivery],
    seed: int = 0,
    tick_ns: int = 250 * MS,
    settle_ns: Sequence[int] = (SECOND, 300 * SECOND, 300 * SECOND),
) -> ReplayResult:
    """Delivers everything in arrival order, running the worker after each instant and on idle
    ticks; then lets `settle_ns` pass (engine quiet) so every request must have its answer."""
    rng = random.Random(seed)
    result = ReplayResult()
    pass_open = False

    def run() -> None:
        before = len(runtime.timeline)
        if runtime.health().state == "running":  # a failed worker runs nothing any more
            runtime.run_until_idle()
        if pass_open:
            result.subtasks_in_open_pass += [
                (start, kind) for start, _, kind, _ in runtime.timeline[before:]
            ]
        result.polled.extend(runtime.poll())

    def idle_until(t_ns: int, ticks: bool = True) -> None:
        """Moves the clock towards t_ns, running the idle worker when it asked to be woken and
        (`ticks`) every tick_ns."""
        served_ns = None
        while True:
            wake_ns = runtime.next_wake_ns()
            if wake_ns is not None and wake_ns <= clock.peek_ns() and wake_ns != served_ns:
                served_ns = wake_ns  # due while the worker was finishing its cycle
                run()
                continue
            step_ns = clock.peek_ns() + tick_ns if ticks else t_ns
            if wake_ns is not None and wake_ns > clock.peek_ns():
                step_ns = min(step_ns, wake_ns)
            if step_ns >= t_ns:
                break
            clock.set(step_ns)
            run()

    index = 0
    while index < len(deliveries):
        arrival_ns = deliveries[index].arrival_ns
        idle_until(arrival_ns)
        clock.set(max(arrival_ns, clock.peek_ns()))  # a busy worker sees events late
        while index < len(deliveries) and deliveries[index].arrival_ns <= clock.peek_ns():
            delivery = deliveries[index]
            if delivery.event is not None:
                runtime.on_event(delivery.event)
                pass_open = delivery.event.kind == PASS_BEGIN or (
                    pass_open and delivery.event.kind not in (PASS_END, FRAME_END, FRAME_BEGIN)
                )
            for deadline_ms in delivery.deadlines_ms:
                state = random_situation(rng)
                npc_id = delivery.npc_id or f"npc{len(result.issued) % 7}"
                result.issued.append(runtime.submit(combat_request(
                    npc_id, state, ACTIONS, deadline_ms, callback=result.callback_answers.append,
                    **delivery.options,
                )))
            index += 1
        run()
    for pause_ns in settle_ns:
        target_ns = clock.peek_ns() + pause_ns
        idle_until(target_ns, ticks=False)
        clock.set(max(target_ns, clock.peek_ns()))
        run()
    return result


def frames(
    start_ns: int, count: int, budget_ns: int = round(SECOND / 60), passes: int = 3,
    pass_ns: int = 3 * MS, gap_ns: int = MS,
) -> list[Delivery]:
    """`count` regular frames from `start_ns`, each on its own vsync tick, delivered on time."""
    out = []
    for k in range(count):
        t = start_ns + k * budget_ns
        out.append(Delivery(t, EngineEvent(FRAME_BEGIN, "", t)))
        for p in range(passes):
            out.append(Delivery(t, EngineEvent(PASS_BEGIN, f"p{p}", t)))
            t += pass_ns
            out.append(Delivery(t, EngineEvent(PASS_END, f"p{p}", t)))
            t += gap_ns
        out.append(Delivery(t, EngineEvent(FRAME_END, "", t)))
    return out
