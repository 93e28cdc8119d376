"""Plots of the co-location benchmark: a timeline of a few frames and a summary per policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lego_embed.engines.colocation_bench import ColocationRun  # noqa: E402

KIND_COLORS = {
    "embed": "#9467bd", "attention": "#1f77b4", "ffn": "#2ca02c", "layer": "#17becf",
    "adaptor": "#ff7f0e", "head": "#d62728",
}
POLICY_ORDER = ("free", "inter_frame", "static_skip", "lego")


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
