"""Co-location benchmark: a replayed game and the NPC runtime compete for one CPU core.

One run: a RenderProcess replays `seconds` of a trace at 60 FPS, pinned to `core`, burning each
pass's CPU time; in this process the Runtime's worker thread, pinned to the same core, answers
`npcs` NPCs that each ask for an action every 60000/APM ms with that period as deadline (SLO:
600 / 300 / 200 ms at 100 / 200 / 300 APM). The calling thread is the engine bridge: it forwards
render events to `Runtime.on_event` and issues the requests on time. `off` runs the render alone
(the reference for added frame misses). Metrics are those of `docs/benchmarks/colocation_*.json`.

Hitch scenario: `Hitch(at_s, ms)` replaces the replay segment's frame at `at_s` seconds with one
of `ms` ms render time (shader compilation, asset streaming), split into passes by the pass
model like any frame. `hitch_metrics` reports, per hitch, how long after the hitch frame ended
the first decision arrived and the SLO attainment of the requests issued after it;
`run_hitch_scenario` runs every policy on the same hitched segment, repeated in shuffled order.
"""

from __future__ import annotations

import json
import math
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
from lego_embed.errors import BenchmarkConfigError
from lego_embed.model.loading import LoadedModel
from lego_embed.npc.combat_task import ACTIONS, PERSONAS, random_situation
from lego_embed.runtime.runtime import Decision, Runtime, RuntimeConfig

SLO_MS_BY_APM = {100: 600.0, 200: 300.0, 300: 200.0}
POLICIES = ("off", "free", "inter_frame", "static_skip", "lego")
FIRST_REQUEST_DELAY_MS = 300.0
SWITCH_INTERVAL_S = 0.0002


@dataclass(frozen=True)
class Hitch:
    """An injected long frame: the replay segment's frame at `at_s` seconds (from the segment's
    first frame, in 60 FPS frames) gets a render time of `ms` milliseconds."""

    at_s: float
    ms: float

    @classmethod
    def parse(cls, spec: str) -> Hitch:
        """'MS@S', e.g. '745@4': a 745 ms frame 4 s into the replay."""
        ms_text, at, at_text = spec.partition("@")
        try:
            hitch = cls(float(at_text), float(ms_text))
        except ValueError:
            hitch = None
        if not at or hitch is None or not (math.isfinite(hitch.ms) and hitch.ms > 0) or not (
            math.isfinite(hitch.at_s) and hitch.at_s >= 0
        ):
            raise BenchmarkConfigError(
                f"hitch {spec!r}: write it as MS@S with MS > 0 the frame's render time in ms and "
                "S >= 0 its position in seconds from the start of the replay, e.g. 745@4"
            )
        return hitch

    @property
    def frame_index(self) -> int:
        return round(self.at_s * 1000.0 / FRAME_BUDGET_60FPS_MS)


@dataclass(frozen=True)
class ColocationSetting:
    """One benchmark run: trace, APM (actions per minute per NPC), policy, NPC count, length (s).

    start_frame: first trace frame replayed (None: `representative_start`). runtime_options:
    extra RuntimeConfig fields (for the feature ablations: edf, batching, prefix_reuse,
    constrained). hitches: long frames injected into the replay segment.
    """

    trace: RenderTrace
    apm: int
    policy: str
    npcs: int = 1
    seconds: float = 3.0
    start_frame: int | None = None
    runtime_options: dict[str, Any] = field(default_factory=dict)
    hitches: tuple[Hitch, ...] = ()

    @property
    def slo_ms(self) -> float:
        """The deadline of each request (ms): one action period, 60000 / APM."""
        if self.apm in SLO_MS_BY_APM:
            return SLO_MS_BY_APM[self.apm]
        return 60000.0 / self.apm if self.apm > 0 else float("inf")


@dataclass
class ColocationRun:
    """What one run measured: frame records, answers, requests issued, LLM subtask spans, the
    runtime's final stats, and when each request was issued ((request id, monotonic ns))."""

    setting: ColocationSetting
    frames: list[FrameRecord]
    decisions: list[Decision]
    requests: int
    timeline: list[tuple[int, int, str, int]]
    runtime_stats: dict[str, Any] | None
    issued: list[tuple[int, int]] = field(default_factory=list)


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
    render_ms = list(trace.render_ms[start:start + frames])
    for hitch in setting.hitches:
        if hitch.frame_index >= len(render_ms):
            raise BenchmarkConfigError(
                f"hitch at {hitch.at_s} s is past the {len(render_ms)}-frame replay; put it "
                f"before {len(render_ms) * FRAME_BUDGET_60FPS_MS / 1000:.1f} s"
            )
        render_ms[hitch.frame_index] = hitch.ms
    segment = RenderTrace(trace.name, trace.path, trace.column, tuple(render_ms),
                          trace.dropped_rows)
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
    issued: list[tuple[int, int]] = []
    rng = random.Random(seed)
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
                issued.append(
                    (runtime.request(f"npc{npc}", state, list(ACTIONS), setting.slo_ms), now_ns)
                )
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
        runtime.stats() if runtime is not None else None, issued,
    )


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
    if run.runtime_stats is not None:
        stats = run.runtime_stats
        row["runtime"] = {
            key: stats[key]
            for key in ("subtasks", "batched_subtasks", "prefix_hits", "escalations", "errors",
                        "contended_subtasks", "relevels", "llm_busy_ms", "worker_restarts",
                        "failed_requests", "overdue_requests")
        }
        row["worker_restarts"] = stats["worker_restarts"]
    if setting.hitches:
        row["hitches"] = hitch_metrics(run)
    return row


def hitch_metrics(run: ColocationRun) -> list[dict[str, Any]]:
    """Per injected hitch: the hitch frame's measured length, how long after it ended the first
    decision (an allowed action) arrived, and the SLO attainment of the requests issued after
    it ended (and before the next hitch). A decision's arrival time is its request's issue time
    plus its latency."""
    frames = run.frames
    issued_at = dict(run.issued)
    answered_at = sorted(
        issued_at[d.request_id] + round(d.latency_ms * 1e6)
        for d in run.decisions if d.action is not None and d.request_id in issued_at
    )
    by_id = {d.request_id: d for d in run.decisions}
    hitches = sorted(run.setting.hitches, key=lambda h: h.frame_index)
    rows = []
    for k, hitch in enumerate(hitches):
        if hitch.frame_index >= len(frames):
            continue
        end_ns = frames[hitch.frame_index].end_ns
        until_ns = (frames[hitches[k + 1].frame_index].begin_ns
                    if k + 1 < len(hitches) and hitches[k + 1].frame_index < len(frames)
                    else None)
        after = [rid for rid, t in run.issued if t >= end_ns and (until_ns is None or t < until_ns)]
        met = sum(by_id[rid].deadline_met for rid in after if rid in by_id)
        first = next((t for t in answered_at if t >= end_ns), None)
        rows.append({
            "at_s": hitch.at_s,
            "ms": hitch.ms,
            "frame_index": hitch.frame_index,
            "hitch_frame_ms": round(frames[hitch.frame_index].frame_ms, 2),
            "first_decision_after_hitch_ms": (
                round((first - end_ns) / 1e6, 2) if first is not None else None
            ),
            "requests_after_hitch": len(after),
            "slo_attainment_after_hitch": round(met / len(after), 4) if after else None,
        })
    return rows


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
) -> MatrixResult:
    """Every trace x APM x NPC count x policy, each against an `off` run of the same trace."""
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
                    setting = ColocationSetting(trace, apm, policy, npcs, seconds)
                    run = run_colocation(loaded, setting, bundle, accuracy_by_level, core)
                    row = summarize(run, off["frame_miss_rate"])
                    runs.append(row)
                    if policy == "lego" and npcs == max(npcs_list) and timeline_run is None:
                        timeline_run = run
                    progress(
                        f"{trace.name} apm={apm} npcs={npcs} {policy}: slo={row['slo_attainment']}"
                        f" added_miss={row['added_frame_miss_rate']}"
                        f" util={row['headroom_utilization']}"
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


@dataclass
class HitchScenarioResult:
    """Rows of every run of the hitch scenario (`off` and each policy, per repeat, with the
    repeat and the run's position in its shuffled order) and the last repeat's runs by policy
    (for the plot)."""

    rows: list[dict[str, Any]]
    runs: dict[str, ColocationRun]


def run_hitch_scenario(
    loaded: LoadedModel,
    trace: RenderTrace,
    apm: int,
    npcs: int,
    seconds: float,
    hitches: tuple[Hitch, ...],
    core: int | None,
    bundle: Any = None,
    accuracy_by_level: dict[int, float] | None = None,
    policies: tuple[str, ...] = MATRIX_POLICIES,
    repeats: int = 1,
    progress: Any = print,
) -> HitchScenarioResult:
    """The same hitched replay segment for `off` and every policy, `repeats` times, each repeat
    in its own shuffled order (seeded by the repeat), so policies are compared side by side."""
    rows: list[dict[str, Any]] = []
    runs: dict[str, ColocationRun] = {}
    for repeat in range(repeats):
        order = ["off", *policies]
        random.Random(repeat).shuffle(order)
        runs = {}
        for policy in order:
            off = policy == "off"
            setting = ColocationSetting(trace, 0 if off else apm, policy, 0 if off else npcs,
                                        seconds, hitches=hitches)
            runs[policy] = run_colocation(None if off else loaded, setting, bundle,
                                          accuracy_by_level, core)
        off_rate = summarize(runs["off"], None)["frame_miss_rate"]
        for position, policy in enumerate(order):
            row = summarize(runs[policy], None if policy == "off" else off_rate)
            row.update(repeat=repeat, position=position)
            if policy == "off":
                row.update(apm=None, npcs=0, added_frame_miss_rate=0.0)
            rows.append(row)
            first = (row["hitches"][0] if row.get("hitches") else {})
            progress(
                f"repeat {repeat} {policy}: slo={row['slo_attainment']} "
                f"slo_after_hitch={first.get('slo_attainment_after_hitch')} "
                f"first_decision_after_hitch_ms={first.get('first_decision_after_hitch_ms')} "
                f"added_miss={row['added_frame_miss_rate']} "
                f"restarts={row.get('worker_restarts')}"
            )
    return HitchScenarioResult(rows, runs)


def hitch_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per policy, over repeats: median, min and max of the hitch metrics (first hitch) and of
    SLO attainment and added frame misses; total worker restarts."""
    summary = []
    for policy in dict.fromkeys(r["policy"] for r in rows if r["policy"] != "off"):
        mine = [r for r in rows if r["policy"] == policy]
        entry: dict[str, Any] = {"policy": policy, "runs": len(mine),
                                 "worker_restarts": sum(r.get("worker_restarts") or 0
                                                        for r in mine)}
        values = {
            "slo_attainment_after_hitch": [r["hitches"][0]["slo_attainment_after_hitch"]
                                           for r in mine if r.get("hitches")],
            "first_decision_after_hitch_ms": [r["hitches"][0]["first_decision_after_hitch_ms"]
                                              for r in mine if r.get("hitches")],
            "slo_attainment": [r["slo_attainment"] for r in mine],
            "added_frame_miss_rate": [r["added_frame_miss_rate"] for r in mine],
        }
        for key, found in values.items():
            present = [v for v in found if v is not None]
            entry[key] = (
                {"median": round(float(np.median(present)), 4), "min": min(present),
                 "max": max(present)} if present else None
            )
        summary.append(entry)
    return summary
