"""The co-location matrix of `lego-embed bench colocation --all`, repeated, with spreads.

Three sections, all against the same `off` run of their block:
- `main`: every trace x APM (100 / 200 / 300) x NPC count (1 / 4) x policy (free, inter_frame,
  static_skip, lego): the issue's settings.
- `regime`: LEGO's regime, where the full model's demand is `regime_ratios` (1.0 to 1.5) times
  the usable headroom: at 300 APM, the NPC count that makes (decisions per second x the full
  model's cost per decision, measured by the runtime's warm-up on this machine) that multiple
  of the replay segment's inter-frame headroom per second (contention-free; the intra-frame
  gaps are shorter than the wake-up, a subtask and the margin on this CPU, so they are not
  usable headroom). Every policy runs there, and `oracle` (lego told the true future headroom;
  its window level floor, like lego's, comes from the measured headroom),
  and six variants of lego (`REGIME_ABLATIONS`): its batches split to fit gaps (what keeping
  them whole buys where batching matters most), borrowing the next frame's slack (the
  runtime option `borrow_frame_slack`, off by default: what it buys where compute is scarce),
  its worker reading the render's events itself (`events="direct"`: what the wake-up a
  game thread adds costs), its worker under SCHED_BATCH (`worker_yields`: what yielding
  to the render's wake-ups costs or buys), without the window's level floor
  (`window_level_floor` off: each request's level chosen against the queued work alone), and
  admitting new requests before the gap's first subtask (`admission_in_gap_tail` off: what
  moving admission to the gap's tail buys).
- `ablations`: lego with one feature off, on one trace at 300 APM with 4 NPCs.

The plan's `mix` is what every NPC asks for in the main and regime sections: `decisions` (an
action per period) or `dialogue` (an action and a streamed bark per period, `bench.colocation`);
the regime is sized by the cost of a decision either way. Ablations always ask for decisions.

Every run is repeated `repeats` times. A block is one trace in one repeat: its `off` run and
all its runs in a fresh random order (seeded by repeat and trace), so the policies of a setting
are compared side by side and machine drift spreads over all of them. `aggregate` reports mean,
min and max of every rate over the repeats; `skip_regret` compares oracle and lego per regime
setting.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lego_embed.bench.colocation import (
    MATRIX_POLICIES,
    ColocationRun,
    ColocationSetting,
    representative_start,
    run_colocation,
    summarize,
)
from lego_embed.engines.trace_replay import (
    FRAME_BUDGET_60FPS_MS,
    PassModel,
    RenderTrace,
    simulate_frames,
)
from lego_embed.model.executor import Executor
from lego_embed.model.loading import LoadedModel
from lego_embed.model.timing import DeviceTimer
from lego_embed.npc.decider import NpcDecider
from lego_embed.tasks.combat.decide import CombatDecider
from lego_embed.tasks.combat.policy import ACTIONS, random_situation

MATRIX_APMS = (100, 200, 300)
MATRIX_NPCS = (1, 4)
REGIME_POLICIES = ("free", "inter_frame", "static_skip", "lego", "oracle")
REGIME_RATIOS = (1.0, 1.25, 1.5)
REGIME_APM = 300
REGIME_TRACES = ("blackmyth_render_1", "ffxvi_render_1", "rdr2_render_2")
# name, ColocationSetting fields that differ from lego's
REGIME_ABLATIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("split_batches", {"runtime_options": {"whole_batches": False}}),
    ("borrow_frame_slack", {"runtime_options": {"borrow_frame_slack": True}}),
    ("direct_events", {"events": "direct"}),
    ("worker_yields", {"runtime_options": {"worker_yields": True}}),
    ("no_level_floor", {"runtime_options": {"window_level_floor": False}}),
    ("admission_first", {"runtime_options": {"admission_in_gap_tail": False}}),
)
ABLATION_APM, ABLATION_NPCS = 300, 4
ABLATIONS: tuple[tuple[str, dict[str, Any], dict[str, Any] | None], ...] = (
    ("lego", {}, None),
    ("no_ffn_split", {"split_ffn": False}, None),
    ("no_superseding_no_fallback", {}, {"supersede": False}),
    ("no_batching", {"batching": False}, None),
    ("free_text_16_tokens", {"constrained": False}, None),
    ("admission_first", {"admission_in_gap_tail": False}, None),
)
RATE_METRICS = (
    "slo_attainment", "model_slo_attainment", "fallback_rate", "superseded_rate",
    "frame_miss_rate", "added_frame_miss_rate", "llm_overlapped_miss_rate",
    "headroom_utilization", "backlogged_fill", "backlogged_fill_inter", "backlogged_fill_intra",
    "backlogged_wake_ms", "backlogged_tail_ms", "expected_accuracy", "mean_skipped_layers",
    "p50_action_ms", "p99_action_ms",
)
DIALOGUE_METRICS = (
    "p50_first_token_ms", "p99_first_token_ms", "pace_attained", "p50_tokens_per_s",
    "mean_skipped_layers_per_token",
)


# runs one setting of a repeat: (model, or None for `off`; setting; repeat) -> the run
Runner = Callable[[LoadedModel | None, ColocationSetting, int], ColocationRun]


def real_runner(bundle: Any = None, accuracy_by_level: dict[int, float] | None = None,
                core: int | None = None) -> Runner:
    """The runner of a real matrix: `run_colocation` on `core`, the same seed every repeat (the
    repeats differ in the machine's state)."""
    def run(loaded: LoadedModel | None, setting: ColocationSetting, _: int) -> ColocationRun:
        return run_colocation(loaded, setting, bundle, accuracy_by_level, core)
    return run


@dataclass(frozen=True)
class MatrixPlan:
    """What to run: seconds per run, repeats, the main matrix's APMs / NPC counts / policies,
    the regime's traces (names), demand ratios and APM, the ablation trace (None: no
    ablations), the seed of the run orders, and the mix of the main and regime runs (see the
    module docstring)."""

    seconds: float = 5.0
    repeats: int = 3
    apms: tuple[int, ...] = MATRIX_APMS
    npcs_list: tuple[int, ...] = MATRIX_NPCS
    policies: tuple[str, ...] = MATRIX_POLICIES
    regime_traces: tuple[str, ...] = REGIME_TRACES
    regime_ratios: tuple[float, ...] = REGIME_RATIOS
    regime_apm: int = REGIME_APM
    ablation_trace: str | None = "blackmyth_render_1"
    seed: int = 0
    mix: str = "decisions"

    def runs(self, traces: Sequence[RenderTrace]) -> int:
        """How many runs the plan makes over `traces` (`off` runs included), counting one NPC
        count per regime ratio (`regime_settings` merges ratios that round to the same count)."""
        names = {t.name for t in traces}
        per_repeat = len(traces) * (1 + len(self.apms) * len(self.npcs_list) * len(self.policies))
        per_repeat += sum(name in names for name in self.regime_traces) * len(
            self.regime_ratios) * (len(REGIME_POLICIES) + len(REGIME_ABLATIONS))
        if self.ablation_trace in names:
            per_repeat += len(ABLATIONS)  # the trace's `off` run is counted above
        return per_repeat * self.repeats


@dataclass(frozen=True)
class Job:
    """One run of a block: its section (main, regime, ablation, off), setting, and for regime
    runs the demand ratio, for ablations the ablation's name."""

    section: str
    setting: ColocationSetting
    demand_ratio: float | None = None
    ablation: str | None = None


@dataclass
class MatrixResult:
    """Every run's row, the aggregated rows, skip_regret per regime setting, the regime's NPC
    counts and demand ratios, and the run kept for the timeline plot."""

    runs: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    skip_regret: list[dict[str, Any]]
    regime: list[dict[str, Any]]
    timeline_run: ColocationRun | None = None
    decision_cost_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def usable_headroom_ms_per_s(
    trace: RenderTrace, seconds: float, pass_model: PassModel | None = None
) -> float:
    """Inter-frame headroom (ms per second) of the replay segment `run_colocation` plays,
    contention-free: from each frame's end to the next frame's vsync start."""
    frames = round(seconds * 1000.0 / FRAME_BUDGET_60FPS_MS)
    start = min(representative_start(trace, frames), max(0, trace.frames - frames))
    records = [record for record, _ in simulate_frames(
        trace.render_ms[start:start + frames], pass_model)]
    if len(records) < 2:
        return 0.0
    gap_ns = sum(b.begin_ns - a.end_ns for a, b in zip(records, records[1:], strict=False))
    return gap_ns / 1e6 / ((records[-1].begin_ns - records[0].begin_ns) / 1e9)


def decision_cost_ms(loaded: LoadedModel, samples: int = 31, unmeasured: int = 4,
                     timer: DeviceTimer | None = None) -> float:
    """The full model's compute per decision on this machine (ms): the median over `samples`
    combat decisions run to completion (a quarter of a second on the project's CPU machine),
    after `unmeasured` ones: long enough that a shared VM's slow spell of a few hundred ms
    does not set the regime's NPC counts. `timer`: what times the subtasks (default measured;
    a simulated device gives the simulated cost)."""
    decider = CombatDecider(loaded, NpcDecider(loaded, Executor(loaded, timer=timer)))
    rng = random.Random(0)
    costs = []
    for k in range(samples + unmeasured):
        cost = decider.decide(random_situation(rng), list(ACTIONS)).compute_ms
        if k >= unmeasured:
            costs.append(cost)
    return float(np.median(costs))


def regime_settings(
    trace: RenderTrace, plan: MatrixPlan, decision_cost_ms: float
) -> list[tuple[int, float]]:
    """(NPC count, demand ratio) for each of the plan's ratios on this trace: the count whose
    full-model demand is nearest the ratio times the usable headroom (distinct counts)."""
    usable = usable_headroom_ms_per_s(trace, plan.seconds)
    per_npc = plan.regime_apm / 60.0 * decision_cost_ms
    chosen: dict[int, float] = {}
    for ratio in plan.regime_ratios:
        npcs = max(1, round(ratio * usable / per_npc))
        chosen.setdefault(npcs, round(npcs * per_npc / usable, 3))
    return sorted(chosen.items())


def _block_jobs(
    trace: RenderTrace, plan: MatrixPlan, regime: list[tuple[int, float]]
) -> list[Job]:
    seconds, mix = plan.seconds, plan.mix
    jobs = [Job("off", ColocationSetting(trace, 0, "off", 0, seconds))]
    for apm in plan.apms:
        for npcs in plan.npcs_list:
            jobs += [Job("main", ColocationSetting(trace, apm, policy, npcs, seconds, mix=mix))
                     for policy in plan.policies]
    for npcs, ratio in regime:
        jobs += [Job("regime", ColocationSetting(trace, plan.regime_apm, policy, npcs, seconds,
                                                 mix=mix),
                     demand_ratio=ratio) for policy in REGIME_POLICIES]
        jobs += [Job("regime", ColocationSetting(trace, plan.regime_apm, "lego", npcs, seconds,
                                                 mix=mix, **fields),
                     demand_ratio=ratio, ablation=name) for name, fields in REGIME_ABLATIONS]
    if trace.name == plan.ablation_trace:
        for name, runtime_options, request_options in ABLATIONS:
            requests = {} if request_options is None else {"request_options": request_options}
            setting = ColocationSetting(trace, ABLATION_APM, "lego", ABLATION_NPCS, seconds,
                                        runtime_options=runtime_options, **requests)
            jobs.append(Job("ablation", setting, ablation=name))
    return jobs


def run_matrix(
    loaded: LoadedModel,
    traces: list[RenderTrace],
    plan: MatrixPlan,
    core: int | None,
    decision_cost_ms: float,
    bundle: Any = None,
    accuracy_by_level: dict[int, float] | None = None,
    progress: Callable[[str], None] = print,
    runner: Runner | None = None,
) -> MatrixResult:
    """Runs the plan (see the module docstring); `decision_cost_ms` is the full model's
    compute per decision that sizes the regime. `runner` runs one setting in a repeat
    (default: `run_colocation` for real on `core`; `bench.simulated` runs it on a simulated
    clock)."""
    runner = runner or real_runner(bundle, accuracy_by_level, core)
    regime = {t.name: regime_settings(t, plan, decision_cost_ms)
              for t in traces if t.name in plan.regime_traces}
    rows: list[dict[str, Any]] = []
    timeline_run = None
    total, done, started = plan.runs(traces), 0, time.monotonic()
    for repeat in range(plan.repeats):
        order = list(traces)
        random.Random(f"{plan.seed}/{repeat}").shuffle(order)
        for trace in order:
            jobs = _block_jobs(trace, plan, regime.get(trace.name, []))
            random.Random(f"{plan.seed}/{repeat}/{trace.name}").shuffle(jobs)
            finished: list[tuple[int, Job, ColocationRun, float]] = []
            for position, job in enumerate(jobs):
                llm = job.section != "off"
                run = runner(loaded if llm else None, job.setting, repeat)
                finished.append((position, job, run, round(os.getloadavg()[0], 2)))
                done += 1
                if (job.section == "regime" and job.setting.policy == "lego"
                        and timeline_run is None):
                    timeline_run = run
                eta_min = (time.monotonic() - started) / done * (total - done) / 60
                progress(f"[{done}/{total}, ~{eta_min:.0f} min left] repeat {repeat} "
                         f"{trace.name} {job.section} {job.setting.policy} "
                         f"apm={job.setting.apm} npcs={job.setting.npcs}")
            off_rate = next(summarize(run, None)["frame_miss_rate"]
                            for _, job, run, _ in finished if job.section == "off")
            for position, job, run, load in finished:
                off = job.section == "off"
                row = summarize(run, None if off else off_rate)
                if off:
                    row.update(apm=None, npcs=0, added_frame_miss_rate=0.0)
                row.update(section=job.section, repeat=repeat, position=position,
                           loadavg_1min=load)
                if job.demand_ratio is not None:
                    row["demand_ratio"] = job.demand_ratio
                if job.ablation is not None:
                    row["ablation"] = job.ablation
                rows.append(row)
    aggregated = aggregate(rows)
    regime_rows = [{"trace": name, "npcs": npcs, "demand_ratio": ratio, "apm": plan.regime_apm,
                    "usable_headroom_ms_per_s": round(usable_headroom_ms_per_s(
                        next(t for t in traces if t.name == name), plan.seconds), 2)}
                   for name, settings in regime.items() for npcs, ratio in settings]
    return MatrixResult(rows, aggregated, skip_regret(rows), regime_rows, timeline_run,
                        decision_cost_ms, {"plan": asdict(plan)})


def _group_key(row: dict[str, Any]) -> tuple:
    return (row.get("section"), row["trace"], row["apm"], row["npcs"], row["policy"],
            row.get("ablation"))


def _spread(values: list[float]) -> dict[str, float] | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {"mean": round(float(np.mean(present)), 4), "min": round(min(present), 4),
            "max": round(max(present), 4), "n": len(present)}


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (section, trace, APM, NPCs, policy, ablation): mean, min and max over the
    repeats of every rate (RATE_METRICS, and DIALOGUE_METRICS for dialogue runs), requests and
    answers summed, load averages seen."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_group_key(row), []).append(row)
    out = []
    for (section, trace, apm, npcs, policy, ablation), mine in groups.items():
        entry: dict[str, Any] = {"section": section, "trace": trace, "apm": apm, "npcs": npcs,
                                 "policy": policy, "repeats": len(mine)}
        if ablation is not None:
            entry["ablation"] = ablation
        if "demand_ratio" in mine[0]:
            entry["demand_ratio"] = mine[0]["demand_ratio"]
        dialogue = DIALOGUE_METRICS if any("mix" in r for r in mine) else ()
        for metric in RATE_METRICS + dialogue:
            entry[metric] = _spread([r.get(metric) for r in mine])
        for count in ("requests", "answered", "decided", "fallbacks", "superseded", "failed",
                      "frames"):
            entry[count] = sum(r.get(count) or 0 for r in mine)
        entry["loadavg_1min"] = _spread([r.get("loadavg_1min") for r in mine])
        out.append(entry)
    return out


def skip_regret(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per regime setting: the oracle's expected accuracy minus lego's (mean over repeats, and
    per repeat: min and max), with both SLO attainments; `same_slo` when they are within 0.01
    (the regret is only meaningful then, or when lego's SLO is the higher one)."""
    regime = [r for r in rows if r.get("section") == "regime" and r.get("ablation") is None]
    out = []
    for trace, npcs in dict.fromkeys((r["trace"], r["npcs"]) for r in regime):
        def of(policy: str, mine_trace: str = trace, mine_npcs: int = npcs) -> dict[int, dict]:
            return {r["repeat"]: r for r in regime if r["trace"] == mine_trace
                    and r["npcs"] == mine_npcs and r["policy"] == policy}

        lego, oracle = of("lego"), of("oracle")
        paired = [(oracle[k], lego[k]) for k in sorted(set(lego) & set(oracle))]
        regrets = [o["expected_accuracy"] - v["expected_accuracy"] for o, v in paired
                   if o["expected_accuracy"] is not None and v["expected_accuracy"] is not None]
        slo_lego = [v["slo_attainment"] for _, v in paired if v["slo_attainment"] is not None]
        slo_oracle = [o["slo_attainment"] for o, _ in paired if o["slo_attainment"] is not None]
        if not paired:
            continue
        mean_lego = float(np.mean(slo_lego)) if slo_lego else None
        mean_oracle = float(np.mean(slo_oracle)) if slo_oracle else None
        out.append({
            "trace": trace, "npcs": npcs, "demand_ratio": paired[0][1].get("demand_ratio"),
            "skip_regret": _spread(regrets),
            "slo_attainment_lego": _spread(slo_lego),
            "slo_attainment_oracle": _spread(slo_oracle),
            "same_slo": (mean_lego is not None and mean_oracle is not None
                         and abs(mean_lego - mean_oracle) <= 0.01),
        })
    return out
