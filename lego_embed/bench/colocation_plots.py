"""Plots of the co-location benchmark: a timeline of a few frames and a summary per policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lego_embed.bench.colocation import ColocationRun  # noqa: E402

KIND_COLORS = {
    "embed": "#9467bd", "attention": "#1f77b4", "ffn": "#2ca02c", "layer": "#17becf",
    "adaptor": "#ff7f0e", "head": "#d62728",
}
POLICY_ORDER = ("free", "inter_frame", "static_skip", "lego", "oracle")


def plot_timeline(run: ColocationRun, path: Path, frames: int = 4) -> None:
    """Render passes vs LLM subtasks over `frames` consecutive frames where the LLM was busy."""
    records = run.frames
    spans = sorted(run.timeline)
    if not records or not spans:
        return
    busy_frames = [
        i for i, frame in enumerate(records[:-frames])
        if any(frame.begin_ns <= start < records[i + frames].begin_ns for start, _, _, _ in spans)
    ]
    first = busy_frames[len(busy_frames) // 2] if busy_frames else 0
    shown = records[first:first + frames]
    t0 = shown[0].begin_ns
    t1 = shown[-1].deadline_ns
    fig, ax = plt.subplots(figsize=(12, 3.2))
    for frame in shown:
        for name, begin, end in frame.pass_spans_ns:
            ax.barh(1, (end - begin) / 1e6, left=(begin - t0) / 1e6, height=0.6,
                    color="#7f7f7f", edgecolor="black", linewidth=0.4)
            ax.text((begin + end - 2 * t0) / 2e6, 1, name[:3], ha="center", va="center",
                    fontsize=6, color="white")
        ax.axvline((frame.deadline_ns - t0) / 1e6, color="red", linestyle=":", linewidth=0.8)
    seen = set()
    for start, end, kind, _ in spans:
        if end < t0 or start > t1:
            continue
        ax.barh(0, max((end - start) / 1e6, 0.02), left=(start - t0) / 1e6, height=0.6,
                color=KIND_COLORS.get(kind, "black"), label=None if kind in seen else kind)
        seen.add(kind)
    ax.set_yticks([0, 1], ["LLM subtasks", "render passes"])
    ax.set_xlabel("time (ms); red dotted: vsync deadlines")
    setting = run.setting
    ax.set_title(f"{setting.trace.name}, {setting.apm} APM, {setting.npcs} NPCs, policy "
                 f"{setting.policy}: {frames} frames")
    ax.set_xlim(0, (t1 - t0) / 1e6)
    ax.legend(loc="upper right", fontsize=7, ncol=6)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


SUMMARY_METRICS = ("slo_attainment", "added_frame_miss_rate", "headroom_utilization")
DIALOGUE_METRICS = ("p50_first_token_ms", "pace_attained", "added_frame_miss_rate",
                    "mean_skipped_layers_per_token")


def plot_summary(rows: list[dict[str, Any]], path: Path,
                 metrics: tuple[str, ...] = SUMMARY_METRICS) -> None:
    """Per policy: each of `metrics` (default: SLO attainment, added frame-miss rate and
    headroom utilisation; DIALOGUE_METRICS for the dialogue mix), mean over traces and APMs,
    one bar group per NPC count."""
    npcs_values = sorted({r["npcs"] for r in rows if r["policy"] != "off"})
    policies = [p for p in POLICY_ORDER if any(r["policy"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics) + 3, 3.6))
    width = 0.8 / max(len(npcs_values), 1)
    for ax, metric in zip(axes, metrics, strict=True):
        for k, npcs in enumerate(npcs_values):
            means = []
            for policy in policies:
                values = [r[metric] for r in rows if r["policy"] == policy and r["npcs"] == npcs
                          and r.get(metric) is not None]
                means.append(float(np.mean(values)) if values else 0.0)
            ax.bar(np.arange(len(policies)) + k * width, means, width, label=f"{npcs} NPC")
        ax.set_xticks(np.arange(len(policies)) + width * (len(npcs_values) - 1) / 2, policies)
        ax.set_title(metric.replace("_", " "))
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("co-location on one CPU core: mean over traces and APMs")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_hitch(runs: dict[str, ColocationRun], summary: list[dict[str, Any]], path: Path) -> None:
    """Left: each request's latency by the time it was issued, per policy (one repeat), the
    hitch frame of each policy's replay shaded (a slowed replay ends it later) and the deadline
    dashed; failed requests as crosses at the top. Right:
    SLO attainment of the requests issued after the first hitch, median over repeats with
    min-max whiskers."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [3, 1]})
    policies = [p for p in POLICY_ORDER if p in runs]
    for k, policy in enumerate(policies):
        run = runs[policy]
        if not run.frames:
            continue
        origin_ns = run.frames[0].begin_ns
        by_id = {d.request_id: d for d in run.decisions}
        times, latencies, failed = [], [], []
        for request_id, issued_ns in run.issued:
            decision = by_id.get(request_id)
            t_s = (issued_ns - origin_ns) / 1e9
            if decision is None or decision.action is None:
                failed.append(t_s)
            else:
                times.append(t_s)
                latencies.append(decision.latency_ms)
        color = f"C{k}"
        left.plot(times, latencies, ".-", color=color, linewidth=0.6, markersize=3, label=policy)
        top = max(latencies, default=1.0) * 1.3
        left.plot(failed, [top] * len(failed), "x", color=color)
        for hitch in run.setting.hitches:
            if hitch.frame_index < len(run.frames):
                frame = run.frames[hitch.frame_index]
                left.axvspan((frame.begin_ns - origin_ns) / 1e9, (frame.end_ns - origin_ns) / 1e9,
                             color="0.85", zorder=0)
        left.axhline(run.setting.slo_ms, color="red", linestyle="--", linewidth=0.8)
    left.set_yscale("log")
    left.set_xlabel("request issued at (s into the replay); grey: hitch frame")
    left.set_ylabel("latency (ms); red dashed: deadline")
    left.legend(fontsize=7, loc="upper right")
    shown = sorted((s for s in summary if s["slo_attainment_after_hitch"]),
                   key=lambda s: POLICY_ORDER.index(s["policy"]))
    names = [s["policy"] for s in shown]
    spans = [s["slo_attainment_after_hitch"] for s in shown]
    medians = [span["median"] for span in spans]
    errors = [[span["median"] - span["min"] for span in spans],
              [span["max"] - span["median"] for span in spans]]
    right.bar(np.arange(len(names)), medians, yerr=errors, capsize=3,
              color=[f"C{policies.index(n)}" if n in policies else "0.5" for n in names])
    right.set_xticks(np.arange(len(names)), names, rotation=20)
    right.set_ylim(0, 1.05)
    right.set_title("SLO attainment after the hitch", fontsize=9)
    any_run = next(iter(runs.values()), None)
    if any_run is not None:
        setting = any_run.setting
        hitches = ", ".join(f"{h.ms:g} ms at {h.at_s:g} s" for h in setting.hitches)
        fig.suptitle(f"{setting.trace.name}: hitch {hitches}")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_regime(rows: list[dict[str, Any]], path: Path) -> None:
    """LEGO's regime as curves, one column per trace: SLO attainment (top) and expected
    accuracy of the model's answers (bottom) against the full model's demand over the usable
    headroom, per policy; points are means over repeats, whiskers min to max."""
    regime = [r for r in rows if r.get("section") == "regime" and r.get("ablation") is None]
    traces = list(dict.fromkeys(r["trace"] for r in regime))
    if not traces:
        return
    fig, axes = plt.subplots(2, len(traces), figsize=(4.2 * len(traces), 6.4), squeeze=False)
    for column, trace in enumerate(traces):
        for row_index, metric in enumerate(("slo_attainment", "expected_accuracy")):
            ax = axes[row_index][column]
            for k, policy in enumerate(POLICY_ORDER):
                mine = sorted((r for r in regime if r["trace"] == trace
                               and r["policy"] == policy and r[metric]),
                              key=lambda r: r["demand_ratio"])
                if not mine:
                    continue
                x = [r["demand_ratio"] + (k - 2) * 0.01 for r in mine]
                mean = np.array([r[metric]["mean"] for r in mine])
                low = mean - np.array([r[metric]["min"] for r in mine])
                high = np.array([r[metric]["max"] for r in mine]) - mean
                ax.errorbar(x, mean, yerr=[low, high], marker="o", markersize=3, capsize=2,
                            linewidth=1, label=policy, color=f"C{k}")
            ax.set_xlabel("full-model demand / usable headroom")
            ax.set_ylabel(metric.replace("_", " "))
            ax.grid(alpha=0.3)
            if row_index == 0:
                ax.set_title(trace, fontsize=9)
                ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("LEGO's regime (300 APM): SLO attainment and expected accuracy vs demand")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
