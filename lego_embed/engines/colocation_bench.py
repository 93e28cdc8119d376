"""Co-location benchmark: a replayed game and the NPC runtime compete for one CPU core.

One run: a RenderProcess replays `seconds` of a trace at 60 FPS, pinned to `core`, burning each
pass's CPU time; in this process the Runtime's worker thread, pinned to the same core, answers
`npcs` NPCs that each ask for an action every 60000/APM ms with that period as deadline (SLO:
600 / 300 / 200 ms at 100 / 200 / 300 APM). The calling thread is the engine bridge: it forwards
render events to `Runtime.on_event` and issues the requests on time. `off` runs the render alone
(the reference for added frame misses). Metrics are those of `docs/benchmarks/colocation_*.json`.
The `dialogue` mix asks every period for an action and the persona's bark in one request
(ChoiceThenLine: the action and the first line token due within the period, then one token
per 1/pace), streamed token by token.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lego_embed.engines.trace_replay import (
    FRAME_BUDGET_60FPS_MS,
    FrameRecord,
    PassModel,
    RenderProcess,
    RenderTrace,
    next_vsync_ns,
)
from lego_embed.model.loading import LoadedModel
from lego_embed.runtime.request import TokenEvent
from lego_embed.runtime.runtime import Decision, Runtime, RuntimeConfig
from lego_embed.tasks.combat.policy import ACTIONS, PERSONAS, random_situation
from lego_embed.tasks.combat.request import combat_request

SLO_MS_BY_APM = {100: 600.0, 200: 300.0, 300: 200.0}
POLICIES = ("off", "free", "inter_frame", "static_skip", "lego")
FIRST_REQUEST_DELAY_MS = 300.0
SWITCH_INTERVAL_S = 0.0002
MIXES = ("decisions", "dialogue")
DIALOGUE_PACE_TOKENS_PER_S = 15.0


@dataclass(frozen=True)
class ColocationSetting:
    """One benchmark run: trace, APM (actions per minute per NPC), policy, NPC count, length (s).

    start_frame: first trace frame replayed (None: `representative_start`). runtime_options:
    extra RuntimeConfig fields (for the feature ablations: edf, batching, prefix_reuse,
    constrained). mix: `decisions` (an action per period) or `dialogue` (an action and a bark
    per period, streamed at `pace_tokens_per_s`).
    """

    trace: RenderTrace
    apm: int
    policy: str
    npcs: int = 1
    seconds: float = 3.0
    start_frame: int | None = None
    runtime_options: dict[str, Any] = field(default_factory=dict)
    mix: str = "decisions"
    pace_tokens_per_s: float = DIALOGUE_PACE_TOKENS_PER_S

    @property
    def slo_ms(self) -> float:
        """The deadline of each request (ms): one action period, 60000 / APM."""
        if self.apm in SLO_MS_BY_APM:
            return SLO_MS_BY_APM[self.apm]
        return 60000.0 / self.apm if self.apm > 0 else float("inf")


@dataclass
class ColocationRun:
    """What one run measured: frame records, decisions, unanswered requests, LLM subtask spans,
    and the streamed line tokens (dialogue mix)."""

    setting: ColocationSetting
    frames: list[FrameRecord]
    decisions: list[Decision]
    requests: int
    timeline: list[tuple[int, int, str, int]]
    runtime_stats: dict[str, Any] | None
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


def _gaps_ns(
    frames: list[FrameRecord], budget_ns: int, pass_model: PassModel | None = None
) -> list[tuple[int, int]]:
    """Headroom spans of a replay: after each pass, its planned gap (the pass model's length,
    cut short if the next pass began earlier); after each frame, up to the next vsync tick.
    A render delayed by the LLM does not stretch the headroom it is counted against."""
    pass_model = pass_model or PassModel()
    gaps = []
    for index, frame in enumerate(frames):
        spans = frame.pass_spans_ns
        _, planned_ms = pass_model.split(frame.render_ms)
        for k, ((_, _, end), (_, begin, _)) in enumerate(zip(spans, spans[1:], strict=False)):
            gaps.append((end, min(begin, end + round(planned_ms[k] * 1e6))))
        if index + 1 < len(frames):
            vsync_ns = next_vsync_ns(frame.end_ns, frame.deadline_ns - budget_ns, budget_ns)
            gaps.append((frame.end_ns, min(frames[index + 1].begin_ns, vsync_ns)))
    return [(a, b) for a, b in gaps if b > a]


def _overlap_ns(spans: list[tuple[int, int]], gaps: list[tuple[int, int]]) -> int:
    """Total length of the intersection of two sets of spans (each sorted, non-overlapping)."""
    total, i, j = 0, 0, 0
    while i < len(spans) and j < len(gaps):
        start, end = max(spans[i][0], gaps[j][0]), min(spans[i][1], gaps[j][1])
        total += max(0, end - start)
        if spans[i][1] < gaps[j][1]:
            i += 1
        else:
            j += 1
    return total


def run_colocation(
    loaded: LoadedModel | None,
    setting: ColocationSetting,
    bundle: Any = None,
    accuracy_by_level: dict[int, float] | None = None,
    core: int | None = None,
    pass_model: PassModel | None = None,
    seed: int = 0,
    answer_grace_s: float = 5.0,
) -> ColocationRun:
    """Runs one setting for real (render process + runtime worker on `core`); after the replay
    it waits up to `answer_grace_s` for requests still in flight."""
    frames = round(setting.seconds * 1000.0 / FRAME_BUDGET_60FPS_MS)
    trace = setting.trace
    start = setting.start_frame
    if start is None:
        start = representative_start(trace, frames)
    start = min(start, max(0, trace.frames - frames))
    segment = RenderTrace(trace.name, trace.path, trace.column,
                          trace.render_ms[start:start + frames], trace.dropped_rows)
    runtime = None
    if setting.policy != "off":
        if loaded is None:
            raise ValueError("a policy other than off needs a loaded model")
        config = RuntimeConfig(
            policy=setting.policy, window_ms=setting.slo_ms, cpu_core=core,
            record_timeline=True, **setting.runtime_options,
        )
        runtime = Runtime(loaded, bundle, config, accuracy_by_level)
        runtime.start()
    render = RenderProcess(segment, pass_model=pass_model, core=core, start_delay_ms=100.0)
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    render.start()
    requests = 0
    rng = random.Random(seed)
    tokens: list[TokenEvent] = []
    output = "choice_then_line" if setting.mix == "dialogue" else "choice"
    try:
        while render.origin_ns == 0 and not render.done:
            render.poll_event(1.0)
        end_ns = render.origin_ns + round(setting.seconds * 1e9)
        arrivals = []
        if runtime is not None:
            slo_ns = round(setting.slo_ms * 1e6)
            first_ns = render.origin_ns + round(FIRST_REQUEST_DELAY_MS * 1e6)
            for npc in range(setting.npcs):
                t_ns = first_ns + npc * slo_ns // setting.npcs
                while t_ns + slo_ns <= end_ns:
                    arrivals.append((t_ns, npc))
                    t_ns += slo_ns
            arrivals.sort()
        next_arrival = 0
        while not render.done:
            now_ns = time.monotonic_ns()
            while next_arrival < len(arrivals) and arrivals[next_arrival][0] <= now_ns:
                npc = arrivals[next_arrival][1]
                state = {**random_situation(rng), "persona": PERSONAS[npc % len(PERSONAS)]}
                runtime.submit(combat_request(
                    f"npc{npc}", state, ACTIONS, setting.slo_ms, output=output,
                    pace_tokens_per_s=setting.pace_tokens_per_s, on_token=tokens.append,
                ))
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
            decisions = runtime.poll()
            while len(decisions) < requests and time.monotonic() < give_up:
                time.sleep(0.01)
                decisions += runtime.poll()
    finally:
        sys.setswitchinterval(previous_interval)
        if runtime is not None:
            runtime.stop()
    return ColocationRun(
        setting, render.records, decisions, requests,
        list(runtime.timeline) if runtime is not None else [],
        runtime.stats() if runtime is not None else None,
        list(tokens),
    )


def dialogue_summary(run: ColocationRun) -> dict[str, Any]:
    """The line figures of a dialogue run: time to first token (p50/p99, ms), lines that missed
    their first-token deadline, pace attained (share of line tokens made by their own deadline),
    tokens per second per line (p50, first to last token), and the skip level of every token."""
    lines = [d for d in run.decisions if d.output != "choice"]
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
    """One row of colocation_*.json (see the issue for the fields). headroom_utilization: LLM
    subtask time inside the headroom spans of `_gaps_ns` over their total length. Extra fields:
    llm_overlapped_miss_rate (missed frames during whose recorded passes an LLM subtask ran; a
    lower bound on the misses the LLM caused, since a subtask still holding the core when the
    render process wakes delays the pass's start rather than overlapping it) and
    llm_in_passes_ms (LLM subtask time overlapping render passes)."""
    frames = run.frames
    budget_ns = round(FRAME_BUDGET_60FPS_MS * 1e6)
    misses = sum(frame.missed for frame in frames)
    miss_rate = misses / len(frames) if frames else float("nan")
    answered = [d for d in run.decisions if d.action is not None]
    latencies = [d.latency_ms for d in answered]
    met = sum(d.deadline_met for d in run.decisions)
    gaps = _gaps_ns(frames, budget_ns, pass_model)
    llm_spans = sorted((start, end) for start, end, _, _ in run.timeline)
    headroom_ns = sum(b - a for a, b in gaps)
    used_ns = _overlap_ns(llm_spans, gaps) if llm_spans else 0
    accuracies = [d.expected_accuracy for d in run.decisions if d.expected_accuracy is not None]
    passes_ns = sorted((b, e) for frame in frames for _, b, e in frame.pass_spans_ns)
    llm_hit_frames = sum(
        frame.missed and _overlap_ns(llm_spans, [(b, e) for _, b, e in frame.pass_spans_ns]) > 0
        for frame in frames
    ) if llm_spans else 0
    setting = run.setting

    def rounded(value: float | None, digits: int = 4) -> float | None:
        return None if value is None or not np.isfinite(value) else round(float(value), digits)

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
        "slo_attainment": rounded(met / run.requests) if run.requests else None,
        "p50_action_ms": rounded(np.percentile(latencies, 50) if latencies else None, 2),
        "p99_action_ms": rounded(np.percentile(latencies, 99) if latencies else None, 2),
        "headroom_utilization": rounded(used_ns / headroom_ns if headroom_ns else None),
        "mean_skipped_layers": rounded(
            np.mean([d.skipped_layers for d in run.decisions]) if run.decisions else None, 3
        ),
        "expected_accuracy": rounded(np.mean(accuracies) if accuracies else None),
        "llm_overlapped_miss_rate": rounded(llm_hit_frames / len(frames) if frames else None),
        "llm_in_passes_ms": rounded(_overlap_ns(llm_spans, passes_ns) / 1e6 if llm_spans else 0.0,
                                    2),
        "requests": run.requests,
        "answered": len(answered),
        "slo_ms": setting.slo_ms,
        "seconds": setting.seconds,
    }
    if setting.runtime_options:
        row["runtime_options"] = dict(setting.runtime_options)
    if setting.mix != "decisions":
        row["mix"] = setting.mix
        row.update(dialogue_summary(run))
    if run.runtime_stats is not None:
        stats = run.runtime_stats
        row["runtime"] = {
            key: stats[key]
            for key in ("subtasks", "batched_subtasks", "prefix_hits", "escalations", "errors",
                        "contended_subtasks", "relevels", "llm_busy_ms")
        }
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


@contextmanager
def core_priority(nice: int | None) -> Iterator[str]:
    """Raises this session's scheduling group over other sessions' (Linux autogroup nice) for the
    duration, so the render process and the LLM worker compete with each other rather than with
    whatever else the machine runs; both stay at the same priority inside the group. Yields what
    was done; restores the previous value on exit."""
    path = Path("/proc/self/autogroup")
    if nice is None:
        yield "autogroup nice unchanged"
        return
    try:
        previous = path.read_text().split("nice")[-1].strip()
        path.write_text(str(nice))
        done = path.read_text().strip()
    except OSError as error:
        yield f"autogroup nice not set ({error})"
        return
    try:
        yield done
    finally:
        path.write_text(previous)


def machine_state() -> dict[str, Any]:
    """What else the machine was doing: load averages and core count, for honest reporting."""
    load1, load5, load15 = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1_5_15": [round(load1, 2), round(load5, 2),
                                                       round(load15, 2)]}


MATRIX_APMS = (100, 200, 300)
MATRIX_NPCS = (1, 4)
MATRIX_POLICIES = ("free", "inter_frame", "static_skip", "lego")
ABLATIONS = (
    ("lego", {}),
    ("no_edf", {"edf": False}),
    ("prefix_reuse_of_4_token_persona", {"prefix_min_tokens": 1}),
    ("free_text_16_tokens", {"constrained": False}),
    ("no_batching", {"batching": False}),
    ("free_text_16_tokens_no_batching", {"constrained": False, "batching": False}),
)


@dataclass
class MatrixResult:
    """Rows of the whole benchmark, the ablation rows, and the run kept for the timeline plot."""

    runs: list[dict[str, Any]]
    ablations: list[dict[str, Any]]
    timeline_run: ColocationRun | None


def run_matrix(
    loaded: LoadedModel,
    traces: list[RenderTrace],
    seconds: float,
    core: int | None,
    bundle: Any = None,
    accuracy_by_level: dict[int, float] | None = None,
    apms: tuple[int, ...] = MATRIX_APMS,
    npcs_list: tuple[int, ...] = MATRIX_NPCS,
    policies: tuple[str, ...] = MATRIX_POLICIES,
    ablation_trace: RenderTrace | None = None,
    progress: Any = print,
    mix: str = "decisions",
) -> MatrixResult:
    """Every trace x APM x NPC count x policy, each against an `off` run of the same trace
    (`mix`: decisions, or dialogue: an action and a streamed bark per period)."""
    runs: list[dict[str, Any]] = []
    timeline_run = None
    for trace in traces:
        off = summarize(run_colocation(None, ColocationSetting(trace, 0, "off", 0, seconds),
                                       core=core), None)
        off.update(apm=None, npcs=0, added_frame_miss_rate=0.0)
        runs.append(off)
        progress(f"{trace.name}: off frame_miss_rate={off['frame_miss_rate']}")
        for apm in apms:
            for npcs in npcs_list:
                for policy in policies:
                    setting = ColocationSetting(trace, apm, policy, npcs, seconds, mix=mix)
                    run = run_colocation(loaded, setting, bundle, accuracy_by_level, core)
                    row = summarize(run, off["frame_miss_rate"])
                    runs.append(row)
                    if policy == "lego" and npcs == max(npcs_list) and timeline_run is None:
                        timeline_run = run
                    lines = (f" ttft_p50={row['p50_first_token_ms']} pace={row['pace_attained']}"
                             if mix == "dialogue" else "")
                    progress(
                        f"{trace.name} apm={apm} npcs={npcs} {policy}: slo={row['slo_attainment']}"
                        f" added_miss={row['added_frame_miss_rate']}"
                        f" util={row['headroom_utilization']}{lines}"
                    )
    ablations = []
    if ablation_trace is not None:
        apm, npcs = max(apms), max(npcs_list)
        off = summarize(run_colocation(None, ColocationSetting(ablation_trace, 0, "off", 0,
                                                               seconds), core=core), None)
        for name, options in ABLATIONS:
            setting = ColocationSetting(ablation_trace, apm, "lego", npcs, seconds,
                                        runtime_options=options)
            row = summarize(run_colocation(loaded, setting, bundle, accuracy_by_level, core),
                            off["frame_miss_rate"])
            row["ablation"] = name
            ablations.append(row)
            progress(f"ablation {name}: slo={row['slo_attainment']} p50={row['p50_action_ms']}")
    return MatrixResult(runs, ablations, timeline_run)
