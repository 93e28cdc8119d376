"""Co-location benchmark: a replayed game and the NPC runtime compete for one CPU core.

One run: a RenderProcess replays `seconds` of a trace at 60 FPS, pinned to `core`, burning each
pass's CPU time; in this process the Runtime's worker thread, pinned to the same core, answers
`npcs` NPCs that each ask for an action every 60000/APM ms with that period as deadline (SLO:
600 / 300 / 200 ms at 100 / 200 / 300 APM). The calling thread is the engine bridge: it forwards
render events to `Runtime.on_event` and issues the requests on time. `off` runs the render alone
(the reference for added frame misses). Metrics are those of `docs/benchmarks/colocation_*.json`;
a setting may inject render hitches (`bench.hitch`). The `dialogue` mix asks every period for an
action and the persona's bark in one request (ChoiceThenLine: the action and the first line
token due within the period, then one token per 1/pace), streamed token by token.

The same run serves the GPU check (`bench.gpu_colocation`): there the render stand-in's passes
are GPU work (`render_device="cuda"`), the setting's `placement` puts it in its own process or in
a thread of this one, and `request_factory` makes the NPCs' requests instead of combat ones.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lego_embed.bench.fill import backlog_spans, fill_report, gap_spans_ns, overlap_ns
from lego_embed.bench.hitch import Hitch, hitch_metrics
from lego_embed.bench.oracle import oracle_factory
from lego_embed.engines.trace_replay import (
    FRAME_BUDGET_60FPS_MS,
    RENDER_PLACEMENTS,
    FrameRecord,
    PassModel,
    RenderProcess,
    RenderTrace,
)
from lego_embed.errors import BenchmarkConfigError
from lego_embed.model.loading import LoadedModel
from lego_embed.model.timing import DeviceTimer
from lego_embed.runtime.answers import CORRECTION, DECIDED, FAILED, FALLBACK, SUPERSEDED
from lego_embed.runtime.clock import Clock
from lego_embed.runtime.request import Request, TokenEvent
from lego_embed.runtime.runtime import Decision, Runtime, RuntimeConfig
from lego_embed.tasks.combat.policy import ACTIONS, PERSONAS, random_situation
from lego_embed.tasks.combat.request import combat_request

SLO_MS_BY_APM = {100: 600.0, 200: 300.0, 300: 200.0}
POLICIES = ("off", "free", "inter_frame", "static_skip", "lego", "oracle")
MATRIX_POLICIES = ("free", "inter_frame", "static_skip", "lego")
GAME_REQUEST_OPTIONS = {"fallback": "block"}  # what the benchmark's NPCs ask with
FIRST_REQUEST_DELAY_MS = 300.0
SWITCH_INTERVAL_S = 0.0002
MIXES = ("decisions", "dialogue")
EVENT_DELIVERIES = ("forwarded", "direct")
DIALOGUE_PACE_TOKENS_PER_S = 15.0


@dataclass(frozen=True)
class ColocationSetting:
    """One benchmark run: trace, APM (actions per minute per NPC), policy, NPC count, length (s).

    start_frame: first trace frame replayed (None: `representative_start`). runtime_options:
    extra RuntimeConfig fields (for the feature ablations: edf, batching, prefix_reuse,
    constrained). hitches: long frames injected into the replay segment. request_options:
    the runtime's options of every request (`runtime.request.Request`: default a fallback
    action; NPCs supersede their older requests). Policy `oracle` is `lego` told the segment's
    true future headroom. mix: `decisions` (an action per period) or `dialogue` (an action and a
    bark per period, streamed at `pace_tokens_per_s`). placement: where the render stand-in
    runs, `process` (its own process) or `thread` (a thread of the LLM's process). events:
    how render events reach the runtime, `forwarded` (this benchmark's thread reads them and
    calls `Runtime.on_event`, as an engine that reports from a game thread does) or `direct`
    (the runtime's worker reads the render's event ring itself, `Runtime.attach_events`).
    """

    trace: RenderTrace
    apm: int
    policy: str
    npcs: int = 1
    seconds: float = 3.0
    start_frame: int | None = None
    runtime_options: dict[str, Any] = field(default_factory=dict)
    hitches: tuple[Hitch, ...] = ()
    request_options: dict[str, Any] = field(
        default_factory=lambda: dict(GAME_REQUEST_OPTIONS)
    )
    mix: str = "decisions"
    pace_tokens_per_s: float = DIALOGUE_PACE_TOKENS_PER_S
    placement: str = "process"
    events: str = "forwarded"

    @property
    def slo_ms(self) -> float:
        """The deadline of each request (ms): one action period, 60000 / APM."""
        if self.apm in SLO_MS_BY_APM:
            return SLO_MS_BY_APM[self.apm]
        return 60000.0 / self.apm if self.apm > 0 else float("inf")


@dataclass
class ColocationRun:
    """What one run measured: frame records, answers (corrections excluded), requests issued,
    LLM subtask spans, the runtime's final stats, when each request was issued ((request id,
    monotonic ns)), the runtime's queue length at every change ((monotonic ns, requests)) and
    the streamed line tokens (dialogue mix)."""

    setting: ColocationSetting
    frames: list[FrameRecord]
    decisions: list[Decision]
    requests: int
    timeline: list[tuple[int, int, str, int]]
    runtime_stats: dict[str, Any] | None
    issued: list[tuple[int, int]] = field(default_factory=list)
    backlog: list[tuple[int, int]] = field(default_factory=list)
    tokens: list[TokenEvent] = field(default_factory=list)


def representative_start(trace: RenderTrace, frames: int) -> int:
    """First frame of the `frames`-long segment whose mean render time is closest to the whole
    trace's mean (skipping the first 5% of the trace: loading screens), so a short replay has
    the trace's typical load rather than its start."""
    render = np.asarray(trace.render_ms)
    if len(render) <= frames:
        return 0
    means = np.convolve(render, np.ones(frames) / frames, mode="valid")
    skip = min(len(render) // 20, len(means) - 1)  # a trace barely longer than the replay
    return skip + int(np.argmin(np.abs(means[skip:] - render.mean())))


def replay_segment(setting: ColocationSetting) -> list[float]:
    """The render time (ms) of each frame a setting replays: `seconds` of its trace from
    `start_frame` (None: `representative_start`), with its hitches injected."""
    frames = round(setting.seconds * 1000.0 / FRAME_BUDGET_60FPS_MS)
    trace = setting.trace
    start = setting.start_frame
    if start is None:
        start = representative_start(trace, frames)
    start = min(start, max(0, trace.frames - frames))
    render_ms = list(trace.render_ms[start:start + frames])
    for hitch in setting.hitches:
        if hitch.frame_index >= len(render_ms):
            raise BenchmarkConfigError(
                f"hitch at {hitch.at_s} s is past the {len(render_ms)}-frame replay; put it "
                f"before {len(render_ms) * FRAME_BUDGET_60FPS_MS / 1000:.1f} s"
            )
        render_ms[hitch.frame_index] = hitch.ms
    return render_ms


def setting_runtime(
    loaded: LoadedModel | None,
    setting: ColocationSetting,
    render_ms: list[float],
    bundle: Any = None,
    accuracy_by_level: dict[int, float] | None = None,
    core: int | None = None,
    pass_model: PassModel | None = None,
    clock: Clock | None = None,
    timer: DeviceTimer | None = None,
) -> Runtime:
    """The Runtime a setting's policy runs (not started): `oracle` is `lego` told the true
    headroom of the replayed segment `render_ms`."""
    if loaded is None:
        raise ValueError("a policy other than off needs a loaded model")
    oracle = setting.policy == "oracle"
    config = RuntimeConfig(
        policy="lego" if oracle else setting.policy, window_ms=setting.slo_ms, cpu_core=core,
        record_timeline=True, **setting.runtime_options,
    )
    predictor = oracle_factory(render_ms, setting.slo_ms, pass_model) if oracle else None
    return Runtime(loaded, bundle, config, accuracy_by_level, clock=clock, predictor=predictor,
                   timer=timer)


def request_arrivals(setting: ColocationSetting, origin_ns: int) -> list[tuple[int, int]]:
    """(time ns, NPC) of every request of a run whose first frame begins at origin_ns, in
    time order: each NPC asks once per period from FIRST_REQUEST_DELAY_MS on, the NPCs spread
    evenly over the period, and only requests whose deadline falls inside the replay."""
    end_ns = origin_ns + round(setting.seconds * 1e9)
    slo_ns = round(setting.slo_ms * 1e6)
    first_ns = origin_ns + round(FIRST_REQUEST_DELAY_MS * 1e6)
    arrivals = []
    for npc in range(setting.npcs):
        t_ns = first_ns + npc * slo_ns // setting.npcs
        while t_ns + slo_ns <= end_ns:
            arrivals.append((t_ns, npc))
            t_ns += slo_ns
    return sorted(arrivals)


def npc_request(
    setting: ColocationSetting, npc: int, rng: random.Random, tokens: list[TokenEvent]
) -> Request:
    """What NPC `npc` asks for in a setting: a combat request of its mix (persona by NPC, a
    random situation), its line tokens streamed into `tokens`."""
    output = "choice_then_line" if setting.mix == "dialogue" else "choice"
    state = {**random_situation(rng), "persona": PERSONAS[npc % len(PERSONAS)]}
    return combat_request(
        f"npc{npc}", state, ACTIONS, setting.slo_ms, output=output,
        pace_tokens_per_s=setting.pace_tokens_per_s, on_token=tokens.append,
        **setting.request_options,
    )


def run_colocation(
    loaded: LoadedModel | None,
    setting: ColocationSetting,
    bundle: Any = None,
    accuracy_by_level: dict[int, float] | None = None,
    core: int | None = None,
    pass_model: PassModel | None = None,
    seed: int = 0,
    answer_grace_s: float = 5.0,
    render_device: str = "cpu",
    request_factory: Callable[[int, random.Random, ColocationSetting], Request] | None = None,
) -> ColocationRun:
    """Runs one setting for real (render stand-in + runtime worker on `core`); after the replay
    it waits up to `answer_grace_s` for requests still in flight. render_device: "cpu" (passes
    burn CPU time) or "cuda" (passes are GPU work). request_factory(npc, rng, setting): the
    request an NPC makes (default: a combat request of the setting's mix)."""
    if setting.placement not in RENDER_PLACEMENTS:
        raise BenchmarkConfigError(
            f"placement {setting.placement!r} is not one of {', '.join(RENDER_PLACEMENTS)}"
        )
    if setting.events not in EVENT_DELIVERIES:
        raise BenchmarkConfigError(
            f"events {setting.events!r} is not one of {', '.join(EVENT_DELIVERIES)}"
        )
    render_ms = replay_segment(setting)
    trace = setting.trace
    segment = RenderTrace(trace.name, trace.path, trace.column, tuple(render_ms),
                          trace.dropped_rows)
    runtime = None
    if setting.policy != "off":
        runtime = setting_runtime(loaded, setting, render_ms, bundle, accuracy_by_level, core,
                                  pass_model)
        runtime.start()
    render = RenderProcess(segment, pass_model=pass_model, core=core, start_delay_ms=100.0,
                           device=render_device, placement=setting.placement)
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    direct = runtime is not None and setting.events == "direct"
    render.start(claimed=direct)
    if direct:
        runtime.attach_events(render.claim_events())
    requests = 0
    issued: list[tuple[int, int]] = []
    rng = random.Random(seed)
    tokens: list[TokenEvent] = []
    try:
        while render.origin_ns == 0 and not render.done:
            render.poll_event(1.0)
        arrivals = request_arrivals(setting, render.origin_ns) if runtime is not None else []
        next_arrival = 0
        while not render.done:
            now_ns = time.monotonic_ns()
            while next_arrival < len(arrivals) and arrivals[next_arrival][0] <= now_ns:
                npc = arrivals[next_arrival][1]
                if request_factory is not None:
                    request = request_factory(npc, rng, setting)
                else:
                    request = npc_request(setting, npc, rng, tokens)
                request_id = runtime.submit(request)
                issued.append((request_id, now_ns))
                requests += 1
                next_arrival += 1
            wait_ns = 10**8
            if next_arrival < len(arrivals):
                wait_ns = arrivals[next_arrival][0] - now_ns
            event = render.poll_event(max(wait_ns, 0) / 1e9)
            if event is not None and runtime is not None:
                runtime.on_event(event)
        render.join()
        decisions: list[Decision] = []
        if runtime is not None:
            # unanswered requests are never dropped: wait for them (late answers count as misses)
            give_up = time.monotonic() + answer_grace_s
            decisions = [d for d in runtime.poll() if d.status != CORRECTION]
            while len(decisions) < requests and (left_s := give_up - time.monotonic()) > 0:
                decisions += [d for d in runtime.poll(left_s) if d.status != CORRECTION]
    finally:
        sys.setswitchinterval(previous_interval)
        if runtime is not None:
            runtime.stop()
    return ColocationRun(
        setting, render.records, decisions, requests,
        list(runtime.timeline) if runtime is not None else [],
        runtime.stats() if runtime is not None else None, issued,
        list(runtime.backlog_timeline) if runtime is not None else [], list(tokens),
    )


def dialogue_summary(run: ColocationRun) -> dict[str, Any]:
    """The line figures of a dialogue run: time to first token (p50/p99, ms), lines that missed
    their first-token deadline, pace attained (share of line tokens made by their own deadline),
    tokens per second per line (p50, first to last token), and the skip level of every token.
    Lines are the model's answers (status decided); a request answered with its fallback action
    has no line (it is counted in `fallbacks`)."""
    lines = [d for d in run.decisions if d.output != "choice" and d.status == DECIDED]
    first = [d.first_token_ms for d in lines if d.first_token_ms is not None]
    by_request: dict[int, list[TokenEvent]] = {}
    for event in run.tokens:
        by_request.setdefault(event.request_id, []).append(event)
    made = [e for events in by_request.values() for e in _distinct_tokens(events)]
    rates = []
    for events in by_request.values():
        tokens = _distinct_tokens(events)
        if len(tokens) >= 2 and tokens[-1].t_ns > tokens[0].t_ns:
            rates.append((len(tokens) - 1) / ((tokens[-1].t_ns - tokens[0].t_ns) / 1e9))
    levels: dict[int, int] = {}
    for event in made:
        levels[event.skip_level] = levels.get(event.skip_level, 0) + 1
    stats = run.runtime_stats or {}
    skipped = {level["level"]: level["skipped_layers"] for level in stats.get("levels", [])}

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if values else None

    return {
        "lines": len(lines),
        "line_tokens": len(made),
        "p50_first_token_ms": pct(first, 50),
        "p99_first_token_ms": pct(first, 99),
        "lines_missing_first_token_deadline": sum(
            d.first_token_ms is None or d.first_token_ms > d.deadline_ms for d in lines),
        "pace_attained": round(sum(e.deadline_met for e in made) / len(made), 4) if made else None,
        "p50_tokens_per_s": pct(rates, 50),
        "pace_tokens_per_s": run.setting.pace_tokens_per_s,
        "token_skip_levels": {str(k): v for k, v in sorted(levels.items())},
        "mean_skipped_layers_per_token": round(
            sum(skipped.get(k, 0) * v for k, v in levels.items()) / len(made), 3) if made else None,
    }


def _distinct_tokens(events: list[TokenEvent]) -> list[TokenEvent]:
    """One event per line token (a final event that only releases held-back text is dropped)."""
    tokens: list[TokenEvent] = []
    for event in events:
        if not tokens or event.index > tokens[-1].index:
            tokens.append(event)
    return tokens


def summarize(
    run: ColocationRun, off_miss_rate: float | None, pass_model: PassModel | None = None
) -> dict[str, Any]:
    """One row of colocation_*.json. Frames: frame_miss_rate, added_frame_miss_rate (minus the
    `off` run's), p99_frame_ms, llm_overlapped_miss_rate (missed frames during whose recorded
    passes an LLM subtask ran; a lower bound on the misses the LLM caused, since a subtask still
    holding the core when the render process wakes delays the pass's start rather than
    overlapping it), llm_in_passes_ms. Answers: requests; answered (every status: requests when
    none was lost); decided / fallbacks / superseded / failed; slo_attainment (the model's action
    within the deadline, over all requests); model_slo_attainment (over the model's answers);
    fallback_rate, superseded_rate; p50/p99 of the model's answers. Headroom:
    headroom_utilization (LLM time inside the gaps over their length) and `bench.fill`'s
    backlogged_fill with its decomposition. Accuracy: mean_skipped_layers and expected_accuracy
    over the model's answers."""
    frames = run.frames
    budget_ns = round(FRAME_BUDGET_60FPS_MS * 1e6)
    misses = sum(frame.missed for frame in frames)
    miss_rate = misses / len(frames) if frames else float("nan")
    by_status = {status: [d for d in run.decisions if d.status == status]
                 for status in (DECIDED, FALLBACK, SUPERSEDED, FAILED)}
    decided = by_status[DECIDED]
    latencies = [d.latency_ms for d in decided]
    met = sum(d.deadline_met for d in run.decisions)
    gaps = gap_spans_ns(frames, budget_ns, pass_model)
    gap_pairs = [(g.start_ns, g.end_ns) for g in gaps]
    llm_spans = sorted((start, end) for start, end, _, _ in run.timeline)
    headroom_ns = sum(b - a for a, b in gap_pairs)
    used_ns = overlap_ns(llm_spans, gap_pairs) if llm_spans else 0
    accuracies = [d.expected_accuracy for d in decided if d.expected_accuracy is not None]
    passes_ns = sorted((b, e) for frame in frames for _, b, e in frame.pass_spans_ns)
    llm_hit_frames = sum(
        frame.missed and overlap_ns(llm_spans, [(b, e) for _, b, e in frame.pass_spans_ns]) > 0
        for frame in frames
    ) if llm_spans else 0
    setting = run.setting
    requests = run.requests

    def rounded(value: float | None, digits: int = 4) -> float | None:
        return None if value is None or not np.isfinite(value) else round(float(value), digits)

    def share(count: int) -> float | None:
        return rounded(count / requests) if requests else None

    row = {
        "trace": setting.trace.name,
        "apm": setting.apm,
        "policy": setting.policy,
        "npcs": setting.npcs,
        "frames": len(frames),
        "frame_miss_rate": rounded(miss_rate),
        "added_frame_miss_rate": rounded(
            miss_rate - off_miss_rate if off_miss_rate is not None else None
        ),
        "p99_frame_ms": rounded(
            np.percentile([f.frame_ms for f in frames], 99) if frames else None, 3
        ),
        "slo_attainment": share(met),
        "model_slo_attainment": rounded(met / len(decided)) if decided else None,
        "fallback_rate": share(len(by_status[FALLBACK])),
        "superseded_rate": share(len(by_status[SUPERSEDED])),
        "p50_action_ms": rounded(np.percentile(latencies, 50) if latencies else None, 2),
        "p99_action_ms": rounded(np.percentile(latencies, 99) if latencies else None, 2),
        "headroom_utilization": rounded(used_ns / headroom_ns if headroom_ns else None),
        "mean_skipped_layers": rounded(
            np.mean([d.skipped_layers for d in decided]) if decided else None, 3
        ),
        "expected_accuracy": rounded(np.mean(accuracies) if accuracies else None),
        "llm_overlapped_miss_rate": rounded(llm_hit_frames / len(frames) if frames else None),
        "llm_in_passes_ms": rounded(overlap_ns(llm_spans, passes_ns) / 1e6 if llm_spans else 0.0,
                                    2),
        "requests": requests,
        "answered": len(run.decisions),
        "decided": len(decided),
        "fallbacks": len(by_status[FALLBACK]),
        "superseded": len(by_status[SUPERSEDED]),
        "failed": len(by_status[FAILED]),
        "slo_ms": setting.slo_ms,
        "seconds": setting.seconds,
    }
    if run.timeline or run.backlog:
        end_ns = frames[-1].end_ns if frames else 0
        row.update(fill_report(llm_spans, gaps, backlog_spans(run.backlog, end_ns)))
    if setting.runtime_options:
        row["runtime_options"] = dict(setting.runtime_options)
    if setting.request_options != GAME_REQUEST_OPTIONS:
        row["request_options"] = {k: v for k, v in setting.request_options.items()
                                  if isinstance(v, bool | str | int | float)}
    if setting.mix != "decisions":
        row["mix"] = setting.mix
        row.update(dialogue_summary(run))
    if run.runtime_stats is not None:
        stats = run.runtime_stats
        row["runtime"] = {
            key: stats[key]
            for key in ("subtasks", "batched_subtasks", "prefix_hits", "escalations", "errors",
                        "contended_subtasks", "relevels", "llm_busy_ms", "worker_restarts",
                        "failed_requests", "overdue_requests", "fallbacks_predicted",
                        "ffn_splits", "superseded_tokens_reused", "overload_events")
        }
        row["runtime"]["backpressure"] = stats["backpressure"]
        row["worker_restarts"] = stats["worker_restarts"]
    if setting.hitches:
        row["hitches"] = hitch_metrics(run)
    return row


def accuracy_table(path: Path) -> dict[int, float]:
    """Expected accuracy by skipped-layer count from skip_accuracy.json ({} if absent):
    `adaptor` accuracy per level, `full` for 0 skipped layers."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    table: dict[int, float] = {}
    for level in data.get("levels", []):
        accuracy = level.get("accuracy", {})
        if accuracy.get("adaptor") is not None:
            table[int(level["skipped_layers"])] = float(accuracy["adaptor"])
        if accuracy.get("full") is not None:
            table[0] = float(accuracy["full"])
    return table


def level_accuracies(bundle: Any, by_skipped_layers: dict[int, float]) -> dict[int, float]:
    """Expected accuracy by skip level (0 and the bundle's levels) from a table by skipped
    layers (see `accuracy_table`)."""
    levels = {0: by_skipped_layers.get(0)}
    for level in getattr(bundle, "levels", []) if bundle is not None else []:
        levels[level.level] = by_skipped_layers.get(level.skipped_layers)
    return {level: value for level, value in levels.items() if value is not None}


