"""The hitch scenario of `lego-embed bench hitch`: every policy on the same hitched replay.

`off` and each policy replay the same segment with injected long frames, repeated, each repeat
in its own shuffled order; `hitch_summary` gives per policy the median and range over repeats.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from lego_embed.bench.colocation import (
    MATRIX_POLICIES,
    ColocationRun,
    ColocationSetting,
    run_colocation,
    summarize,
)
from lego_embed.bench.hitch import Hitch
from lego_embed.engines.trace_replay import RenderTrace
from lego_embed.model.loading import LoadedModel


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
