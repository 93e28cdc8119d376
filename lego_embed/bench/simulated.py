"""The co-location run on a simulated clock: the same runtime and model, with time modelled.

A real run (`bench.colocation.run_colocation`) shares this machine's CPU with other jobs, so
its outcomes move with the machine's load: on a shared 2-vCPU VM a difference between policies
is often inside the run-to-run spread. Here nothing depends on the machine's speed:
- The Runtime runs on a ManualClock without a worker thread, the real model computes every
  subtask (real tokens, real levels, real batches), and `SimulatedDevice` charges each subtask
  a modelled duration: the median this machine measured for its shape (`SubtaskCosts`, from
  runtime warm-ups), times seeded log-normal noise (`jitter`, the sigma of its log).
- The render (`SimulatedRender`) replays the segment's frames with the pass model, on the same
  device: the device runs one thing at a time and never preempts, as a GPU runs one kernel
  after another. A pass due while a subtask runs begins when the subtask ends (so frames
  are missed, as when an LLM kernel holds the GPU), and a subtask dispatched during a pass
  (`free`) starts when the pass ends. A real CPU run shares the core instead, so `free`'s and
  an overrun's frame costs differ between the two.
- The host is modelled by two numbers: `wake_us`, from an event that wakes the idle worker to
  its first decision (the measured median on this VM: 191 to 390 us), and `turn_us`, the
  worker's own time before each subtask (the device is free meanwhile). The rest of the
  worker's own work, admission and level choices included, takes no time.
- The costs are measured for the shapes the runtime's warm-up runs (each level, FFN slices,
  batches of 2 to max_batch, a 32-token prompt); other shapes are derived as the scheduler
  derives them (the nearest token bucket of the kind, scaled by tokens).

Runs are reproducible: the same setting, seed and `SubtaskCosts` give the same answers, levels,
subtask spans and frames on any machine with the same torch build (the model's outputs, and so
the tokens and levels, come from real kernels; the costs come with the results, `--costs`
reuses them). The run's subtask spans are the device's: from the subtask's start (after the
worker's turn and any pass it waited for) to its end; the runtime's own busy time, like a real
worker's wall clock, counts the turn and the wait. What this answers: which policy decisions
are better, free of machine noise; not how a policy fares against a real OS scheduler.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lego_embed.bench.colocation import (
    ColocationRun,
    ColocationSetting,
    npc_request,
    replay_segment,
    request_arrivals,
    setting_runtime,
)
from lego_embed.bench.matrix import Runner, decision_cost_ms
from lego_embed.engines.trace_replay import (
    FRAME_BUDGET_60FPS_MS,
    FrameRecord,
    PassModel,
    next_vsync_ns,
)
from lego_embed.errors import BenchmarkConfigError
from lego_embed.model.loading import LoadedModel
from lego_embed.model.subtask import Subtask
from lego_embed.model.timing import SubtaskTimer
from lego_embed.runtime.answers import CORRECTION, Decision
from lego_embed.runtime.clock import ManualClock
from lego_embed.runtime.events import FRAME_BEGIN, FRAME_END, PASS_BEGIN, PASS_END, EngineEvent
from lego_embed.runtime.request import TokenEvent
from lego_embed.runtime.runtime import MAX_WAIT_NS, Runtime, RuntimeConfig
from lego_embed.runtime.scheduler import CostModel, cost_key

RENDER_START_DELAY_NS = 100_000_000  # as the real render process starts after its launch
DEFAULT_JITTER = 0.1
DEFAULT_WAKE_US = 200.0
DEFAULT_TURN_US = 35.0


@dataclass(frozen=True)
class SubtaskCosts:
    """What the simulated device charges: `median_ns` per cost key (`kind/phase/token bucket`,
    the scheduler's `cost_key`), times log-normal noise whose log has sigma `jitter`; `wake_us`
    (us) from a wake-up to the idle worker's first decision, `turn_us` (us) of the worker's own
    time before each subtask. `measured` says where the medians come from."""

    median_ns: dict[str, float]
    jitter: float = DEFAULT_JITTER
    wake_us: float = DEFAULT_WAKE_US
    turn_us: float = DEFAULT_TURN_US
    measured: str = ""

    def __post_init__(self) -> None:
        if not self.median_ns:
            raise BenchmarkConfigError("subtask costs: no cost entries; calibrate them first")
        for key in self.median_ns:
            try:
                _parse_key(key)
            except ValueError as error:
                raise BenchmarkConfigError(
                    f"subtask costs: key {key!r} is not kind/phase/token bucket "
                    "(e.g. layer/decode/1)"
                ) from error
        numbers = (*self.median_ns.values(), self.jitter, self.wake_us, self.turn_us)
        if any(not math.isfinite(v) or v < 0 for v in numbers):
            raise BenchmarkConfigError(
                "subtask costs: every cost, jitter, wake_us and turn_us must be a finite "
                "number >= 0"
            )

    def model(self) -> CostModel:
        """The medians as a CostModel: shapes not measured are derived as the scheduler does
        (the nearest token bucket of the same kind, scaled; an FFN slice by its share)."""
        return CostModel({_parse_key(key): ns for key, ns in self.median_ns.items()})

    def to_json(self) -> dict[str, Any]:
        return {"median_ns": {k: round(v) for k, v in sorted(self.median_ns.items())},
                "jitter": self.jitter, "wake_us": self.wake_us, "turn_us": self.turn_us,
                "measured": self.measured}

    @classmethod
    def load(cls, path: str | Path) -> SubtaskCosts:
        """From a JSON file: these costs, or a benchmark result holding them
        (`simulated_costs`). Raises BenchmarkConfigError saying what is wrong."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise BenchmarkConfigError(
                f"cannot read subtask costs from {path}: {error}; give a file written by "
                "`lego-embed bench colocation --simulated`"
            ) from error
        data = data.get("simulated_costs", data) if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("median_ns"), dict):
            raise BenchmarkConfigError(
                f"{path} holds no subtask costs (a `median_ns` table, or `simulated_costs`)"
            )
        try:
            return cls({str(k): float(v) for k, v in data["median_ns"].items()},
                       float(data.get("jitter", DEFAULT_JITTER)),
                       float(data.get("wake_us", DEFAULT_WAKE_US)),
                       float(data.get("turn_us", DEFAULT_TURN_US)), str(data.get("measured", "")))
        except (TypeError, ValueError) as error:
            raise BenchmarkConfigError(f"{path}: malformed subtask costs: {error}") from error


def _parse_key(key: str) -> tuple[str, str, int]:
    kind, phase, bucket = key.rsplit("/", 2)
    return kind, phase, int(bucket)


class _RecordingTimer:
    """Measures subtasks as the runtime does and keeps every (cost key, ns)."""

    def __init__(self, timer: SubtaskTimer) -> None:
        self.timer = timer
        self.samples: dict[str, list[int]] = {}

    def run(self, work: Callable[[], None], subtask: Subtask) -> int:
        duration_ns = self.timer.run(work, subtask)
        key = "/".join(map(str, cost_key(subtask)))
        self.samples.setdefault(key, []).append(duration_ns)
        return duration_ns


def calibrate_costs(
    loaded: LoadedModel, bundle: Any = None, warmups: int = 5, jitter: float = DEFAULT_JITTER,
    wake_us: float = DEFAULT_WAKE_US, turn_us: float = DEFAULT_TURN_US,
) -> SubtaskCosts:
    """Measures every subtask shape the runtime's warm-up runs (each level, FFN slices, batches)
    `warmups` times on this machine and keeps the median of each cost key."""
    timer = _RecordingTimer(SubtaskTimer(loaded.device))
    for _ in range(warmups):
        runtime = Runtime(loaded, bundle, RuntimeConfig(), timer=timer)
        runtime.start(thread=False)
        runtime.stop()
    medians = {key: float(round(statistics.median(v))) for key, v in timer.samples.items()}
    return SubtaskCosts(medians, jitter, wake_us, turn_us,
                        f"median of {warmups} runtime warm-ups on {loaded.device.type}")


class SimulatedRender:
    """A replayed segment's frames on the simulated device: each frame begins at the first
    vsync tick (origin + k x budget) at or after the previous frame's end; its passes and gaps
    follow the pass model; a pass begins no earlier than the device is free of other work
    (`device_free_ns`). `records` holds each finished frame, as the real render reports it."""

    def __init__(self, render_ms: list[float], pass_model: PassModel, origin_ns: int,
                 frame_budget_ms: float = FRAME_BUDGET_60FPS_MS) -> None:
        self.render_ms = render_ms
        self.pass_model = pass_model
        self.origin_ns = origin_ns
        self.budget_ns = round(frame_budget_ms * 1e6)
        self.records: list[FrameRecord] = []
        self._began_ns = 0  # when the pass handed out last began
        self._pass_end_ns: int | None = None  # the end of the pass the device runs
        self._events = self._frames()
        self._next: EngineEvent | None = next(self._events, None)

    @property
    def done(self) -> bool:
        """Whether every frame's events were handed out."""
        return self._next is None

    def next_ns(self, device_free_ns: int = 0) -> int | None:
        """When the next event happens if the device runs other work until device_free_ns
        (None after the last frame)."""
        event = self._next
        if event is None:
            return None
        return max(event.t_ns, device_free_ns) if event.kind == PASS_BEGIN else event.t_ns

    def busy_until(self, t_ns: int) -> int:
        """When the device is free of render work, from t_ns on (t_ns when no pass runs)."""
        if self._pass_end_ns is not None and self._pass_end_ns > t_ns:
            return self._pass_end_ns
        return t_ns

    def pop(self, device_free_ns: int = 0) -> EngineEvent:
        """Hands out the next event (see `next_ns`); raises StopIteration after the last."""
        if self._next is None:
            raise StopIteration
        event = EngineEvent(self._next.kind, self._next.name, self.next_ns(device_free_ns))
        if event.kind == PASS_BEGIN:
            self._began_ns = event.t_ns
        self._pass_end_ns = None
        self._next = next(self._events, None)
        return event

    def _frames(self) -> Iterator[EngineEvent]:
        end_ns = self.origin_ns
        for index, frame_ms in enumerate(self.render_ms):
            begin_ns = next_vsync_ns(end_ns, self.origin_ns, self.budget_ns)
            yield EngineEvent(FRAME_BEGIN, "", begin_ns)
            busy_ms, gaps_ms = self.pass_model.split(frame_ms)
            t_ns, spans = begin_ns, []
            for k, (name, pass_ms) in enumerate(zip(self.pass_model.passes, busy_ms,
                                                    strict=True)):
                yield EngineEvent(PASS_BEGIN, name, t_ns)  # planned; `pop` may delay it
                pass_end_ns = self._began_ns + round(pass_ms * 1e6)
                self._pass_end_ns = pass_end_ns
                yield EngineEvent(PASS_END, name, pass_end_ns)
                spans.append((name, self._began_ns, pass_end_ns))
                t_ns = pass_end_ns + (round(gaps_ms[k] * 1e6) if k < len(gaps_ms) else 0)
            end_ns = spans[-1][2]
            self.records.append(FrameRecord(index, frame_ms, begin_ns, end_ns,
                                            begin_ns + self.budget_ns, tuple(spans)))
            yield EngineEvent(FRAME_END, "", end_ns)


class SimulatedDevice:
    """The runtime's DeviceTimer in a simulated run: runs each subtask's work (real tensors),
    charges it its modelled duration (ns) on the ManualClock, and hands the runtime the render
    events and requests that happen meanwhile (`SimulatedReplay.deliver_until`). `spans` holds
    each subtask's (start, end) ns on the device. A failure while handing over is kept in
    `error` (the runtime would take it for the subtask's) for the replay to raise."""

    def __init__(self, clock: ManualClock, costs: SubtaskCosts, seed: int) -> None:
        self.clock = clock
        self.costs = costs
        self.cost_model = costs.model()
        self.rng = random.Random(f"{seed}/device")
        self.replay: SimulatedReplay | None = None
        self.spans: list[tuple[int, int]] = []
        self.error: Exception | None = None

    def run(self, work: Callable[[], None], subtask: Subtask) -> int:
        ready_ns = self.clock.now_ns() + round(self.costs.turn_us * 1000)
        start_ns = ready_ns
        if self.replay is not None:
            self._deliver(ready_ns, device_free_ns=0)  # the worker's turn leaves the device free
            start_ns = self.replay.render.busy_until(ready_ns)
        work()
        noise = math.exp(self.rng.gauss(0.0, self.costs.jitter)) if self.costs.jitter else 1.0
        end_ns = start_ns + round(self.cost_model.predict_ns(subtask, deviations=0.0) * noise)
        if self.replay is not None:
            self._deliver(end_ns, device_free_ns=end_ns)
        if self.error is None:
            self.clock.set(end_ns)
        self.spans.append((start_ns, end_ns))
        return end_ns - start_ns

    def _deliver(self, t_ns: int, device_free_ns: int) -> None:
        if self.error is not None or self.replay is None:
            return
        try:
            self.replay.deliver_until(t_ns, device_free_ns)
        except Exception as error:  # raised by SimulatedReplay.run, not taken for the subtask's
            self.error = error


@dataclass
class SimulatedReplay:
    """One setting replayed on the simulated clock (see the module docstring): the render, the
    NPCs' requests at their times, and the runtime woken as its worker thread would be."""

    runtime: Runtime
    clock: ManualClock
    render: SimulatedRender
    device: SimulatedDevice
    setting: ColocationSetting
    rng: random.Random
    wake_latency_ns: int
    arrivals: list[tuple[int, int]] = field(default_factory=list)
    issued: list[tuple[int, int]] = field(default_factory=list)
    tokens: list[TokenEvent] = field(default_factory=list)
    _next_arrival: int = 0

    def deliver_until(self, t_ns: int, device_free_ns: int = 0) -> bool:
        """Hands the runtime, in time order, every render event and request due by t_ns, the
        clock set to each one's time; True if one of them would wake an idle worker."""
        woke = False
        while True:
            render_ns = self.render.next_ns(device_free_ns)
            arrival_ns = self._next_arrival_ns()
            if arrival_ns is not None and arrival_ns <= t_ns and (
                    render_ns is None or arrival_ns < render_ns):
                self.clock.set(arrival_ns)
                npc = self.arrivals[self._next_arrival][1]
                request_id = self.runtime.submit(npc_request(self.setting, npc, self.rng,
                                                             self.tokens))
                self._next_arrival += 1
                self.issued.append((request_id, arrival_ns))
                woke = True
                continue
            if render_ns is None or render_ns > t_ns:
                return woke
            event = self.render.pop(device_free_ns)
            self.clock.set(event.t_ns)
            self.runtime.on_event(event)
            woke = woke or event.kind != PASS_BEGIN  # as Runtime.on_event rings the doorbell

    def _next_arrival_ns(self) -> int | None:
        if self._next_arrival < len(self.arrivals):
            return self.arrivals[self._next_arrival][0]
        return None

    def next_input_ns(self) -> int | None:
        """When the next render event or request is due (None when both are done)."""
        due = [t for t in (self.render.next_ns(), self._next_arrival_ns()) if t is not None]
        return min(due) if due else None

    def run(self, answer_grace_s: float) -> list[Decision]:
        """Replays to the segment's end, then until every request is answered or
        answer_grace_s (s, simulated) have passed; returns the answers (corrections excluded)."""
        runtime, clock = self.runtime, self.clock
        answers: list[Decision] = []
        run_at: int | None = None
        served_wake: int | None = None
        last_run_ns = clock.now_ns()
        give_up_ns: int | None = None
        while True:
            answers += [d for d in runtime.poll() if d.status != CORRECTION]
            input_ns = self.next_input_ns()
            if input_ns is None:
                if len(answers) >= len(self.arrivals):
                    return answers
                if give_up_ns is None:
                    give_up_ns = clock.now_ns() + round(answer_grace_s * 1e9)
            wake_ns = runtime.next_wake_ns()
            if wake_ns == served_wake:
                wake_ns = None
            candidates = [t for t in (input_ns, run_at, wake_ns, last_run_ns + MAX_WAIT_NS)
                          if t is not None]
            t_ns = max(min(candidates), clock.now_ns())
            if give_up_ns is not None and t_ns > give_up_ns:
                return answers
            clock.set(t_ns)
            if self.deliver_until(t_ns) and run_at is None:
                run_at = t_ns + self.wake_latency_ns
            due_wake = wake_ns is not None and wake_ns <= t_ns
            if (run_at is not None and run_at <= t_ns) or due_wake or (
                    t_ns >= last_run_ns + MAX_WAIT_NS):
                served_wake = wake_ns if due_wake else served_wake
                runtime.run_until_idle()
                if self.device.error is not None:
                    raise self.device.error
                last_run_ns, run_at = clock.now_ns(), None


def simulate_colocation(
    loaded: LoadedModel | None,
    setting: ColocationSetting,
    costs: SubtaskCosts,
    bundle: Any = None,
    accuracy_by_level: dict[int, float] | None = None,
    pass_model: PassModel | None = None,
    seed: int = 0,
    answer_grace_s: float = 5.0,
) -> ColocationRun:
    """Runs one setting on the simulated clock (see the module docstring): the same metrics as
    `run_colocation` (`summarize`), reproducibly. Its placement and event delivery do not
    apply (the host is `wake_us` and `turn_us`)."""
    pass_model = pass_model or PassModel()
    render_ms = replay_segment(setting)
    clock = ManualClock(0)
    if setting.policy == "off":
        render = SimulatedRender(render_ms, pass_model, RENDER_START_DELAY_NS)
        while not render.done:
            render.pop()
        return ColocationRun(setting, render.records, [], 0, [], None)
    device = SimulatedDevice(clock, costs, seed)
    runtime = setting_runtime(loaded, setting, render_ms, bundle, accuracy_by_level,
                              pass_model=pass_model, clock=clock, timer=device)
    runtime.start(thread=False)  # the warm-up runs on the simulated device too
    device.spans.clear()
    origin_ns = clock.now_ns() + RENDER_START_DELAY_NS
    replay = SimulatedReplay(
        runtime, clock, SimulatedRender(render_ms, pass_model, origin_ns), device, setting,
        random.Random(seed), round(costs.wake_us * 1000), request_arrivals(setting, origin_ns),
    )
    device.replay = replay
    try:
        answers = replay.run(answer_grace_s)
    finally:
        runtime.stop()
    timeline = [(start, end, kind, batch) for (start, end), (_, _, kind, batch)
                in zip(device.spans, runtime.timeline, strict=True)]
    return ColocationRun(
        setting, replay.render.records, answers, len(replay.issued), timeline,
        runtime.stats(), replay.issued, list(runtime.backlog_timeline), list(replay.tokens),
    )


def simulated_runner(
    costs: SubtaskCosts, bundle: Any = None, accuracy_by_level: dict[int, float] | None = None,
) -> Runner:
    """A `bench.matrix` runner: every setting on the simulated clock, seeded by its repeat (the
    repeats differ in their NPCs' situations and the cost noise, not in the machine's load)."""
    def run(loaded: LoadedModel | None, setting: ColocationSetting, repeat: int) -> ColocationRun:
        return simulate_colocation(loaded, setting, costs, bundle, accuracy_by_level,
                                   seed=repeat)
    return run


def simulated_decision_ms(loaded: LoadedModel, costs: SubtaskCosts) -> float:
    """The full model's cost per combat decision (ms) on the simulated device, noise-free: what
    sizes the regime of a simulated matrix."""
    device = SimulatedDevice(ManualClock(0), replace(costs, jitter=0.0, turn_us=0.0), 0)
    return decision_cost_ms(loaded, samples=5, unmeasured=0, timer=device)
