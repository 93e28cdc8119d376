"""Markdown tables for docs/BENCHMARKS.md from a `lego-embed bench colocation --all` JSON.

Usage: .venv/bin/python tools/colocation_table.py [docs/benchmarks/colocation_cpu.json]
Cells are mean [min, max] over the repeats; a dialogue-mix JSON also gets the per-run line table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

POLICIES = ("free", "inter_frame", "static_skip", "lego", "oracle")


def spread(value: dict | None, digits: int = 2, signed: bool = False) -> str:
    if not value:
        return "-"
    form = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    mean, low, high = (form.format(value[k]) for k in ("mean", "min", "max"))
    return f"{mean} [{low}, {high}]"


def main_table(rows: list[dict]) -> list[str]:
    main = [r for r in rows if r["section"] == "main"]
    policies = [p for p in POLICIES if any(r["policy"] == p for r in main)]
    out = ["| trace | APM | NPCs | " + " | ".join(policies) + " |",
           "| --- | --- | --- | " + " | ".join("---" for _ in policies) + " |"]
    for key in dict.fromkeys((r["trace"], r["apm"], r["npcs"]) for r in main):
        cells = []
        for policy in policies:
            row = next((r for r in main if (r["trace"], r["apm"], r["npcs"]) == key
                        and r["policy"] == policy), None)
            cells.append("-" if row is None else
                         f"{spread(row['slo_attainment'])} / "
                         f"{spread(row['added_frame_miss_rate'], 3, True)} / "
                         f"{spread(row['backlogged_fill'])}")
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return out


def regime_table(rows: list[dict]) -> list[str]:
    regime = [r for r in rows if r["section"] == "regime"]
    out = ["| trace | NPCs | demand | policy | SLO | model SLO | fallbacks | expected acc. | "
           "added miss | backlogged fill |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in sorted(regime, key=lambda r: (r["trace"], r["npcs"],
                                             POLICIES.index(r["policy"]), r.get("ablation", ""))):
        policy = row["policy"] + (f" ({row['ablation']})" if row.get("ablation") else "")
        out.append(
            f"| {row['trace']} | {row['npcs']} | {row['demand_ratio']} | {policy} | "
            f"{spread(row['slo_attainment'])} | {spread(row['model_slo_attainment'])} | "
            f"{spread(row['fallback_rate'])} | {spread(row['expected_accuracy'], 3)} | "
            f"{spread(row['added_frame_miss_rate'], 3, True)} | "
            f"{spread(row['backlogged_fill'])} |")
    return out


def regret_table(regret: list[dict]) -> list[str]:
    out = ["| trace | NPCs | demand | skip_regret | SLO lego | SLO oracle | same SLO |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in regret:
        out.append(f"| {row['trace']} | {row['npcs']} | {row['demand_ratio']} | "
                   f"{spread(row['skip_regret'], 3, True)} | "
                   f"{spread(row['slo_attainment_lego'])} | "
                   f"{spread(row['slo_attainment_oracle'])} | {row['same_slo']} |")
    return out


def ablation_table(rows: list[dict]) -> list[str]:
    ablations = [r for r in rows if r["section"] == "ablation"]
    out = ["| ablation | SLO | fallbacks | expected acc. | backlogged fill | wake ms | tail ms |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in ablations:
        out.append(f"| {row['ablation']} | {spread(row['slo_attainment'])} | "
                   f"{spread(row['fallback_rate'])} | {spread(row['expected_accuracy'], 3)} | "
                   f"{spread(row['backlogged_fill'])} | {spread(row['backlogged_wake_ms'])} | "
                   f"{spread(row['backlogged_tail_ms'])} |")
    return out


def backpressure_table(runs: list[dict]) -> list[str]:
    """Back-pressure's view at the end of each `lego` run of LEGO's regime against what the run
    served: demand and the sustainable rate at the largest skip level (decisions/s, mean [min,
    max] over the repeats), that rate as the scheduler plans decisions (runs from before
    2026-11-30 07:11 have none: "-"), the runs that ended `overloaded`, and the SLO. Runs that
    measured no cost yet (no rate) are left out."""
    regime = [r for r in runs if r.get("section") == "regime" and r["policy"] == "lego"
              and not r.get("ablation")
              and ((r.get("runtime") or {}).get("backpressure") or {}).get(
                  "sustainable_per_s_by_level")]
    out = ["| trace | NPCs | demand / s | sustainable / s, largest level | as planned / s "
           "| runs ending overloaded | `lego` SLO |", "| --- | --- | --- | --- | --- | --- | --- |"]

    def cell(values: list[float], digits: int = 1) -> str:
        return spread({"mean": sum(values) / len(values), "min": min(values),
                       "max": max(values)}, digits)

    for key in sorted({(r["trace"], r["npcs"]) for r in regime}):
        mine = [r for r in regime if (r["trace"], r["npcs"]) == key]
        states = [r["runtime"]["backpressure"] for r in mine]
        rates = [max(s["sustainable_per_s_by_level"]) for s in states]
        planned = [max(s["planned_per_s_by_level"]) for s in states
                   if s.get("planned_per_s_by_level")]
        out.append(f"| {key[0]} | {key[1]} | {cell([s['demand_per_s'] for s in states])} | "
                   f"{cell(rates)} | {cell(planned) if planned else '-'} | "
                   f"{sum(s['overloaded'] for s in states)} of {len(mine)} | "
                   f"{cell([r['slo_attainment'] for r in mine], 2)} |")
    return out


def dialogue_table(runs: list[dict]) -> list[str]:
    """Per NPC count and policy over every dialogue run (traces x repeats): first-token p50
    (mean, and the range of per-run p50s), worst p99, pace attained, tokens/s p50, added frame
    misses (mean, max), lines late on their first token, action SLO, fallbacks, and the share of
    line tokens made at each skip level."""
    dialogue = [r for r in runs if r.get("mix") == "dialogue" and r.get("section") == "main"]
    out = ["| NPCs | policy | first token p50 ms | worst p99 ms | pace attained | tokens/s p50 | "
           "added frame-miss rate (max) | lines late (first token) | action SLO | fallbacks | "
           "skip levels per token |",
           "| ---: | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]

    def mean(values: list) -> float:
        present = [v for v in values if v is not None]
        return sum(present) / len(present) if present else float("nan")

    for npcs in sorted({r["npcs"] for r in dialogue}):
        for policy in POLICIES:
            mine = [r for r in dialogue if r["npcs"] == npcs and r["policy"] == policy]
            if not mine:
                continue
            firsts = [r["p50_first_token_ms"] for r in mine if r["p50_first_token_ms"] is not None]
            levels: dict[str, int] = {}
            for run in mine:
                for level, count in (run.get("token_skip_levels") or {}).items():
                    levels[level] = levels.get(level, 0) + count
            tokens = sum(levels.values()) or 1
            shares = ", ".join(f"{k}: {v / tokens:.2f}" for k, v in
                               sorted(levels.items(), key=lambda kv: int(kv[0])))
            misses = [r["added_frame_miss_rate"] for r in mine]
            out.append(
                f"| {npcs} | {policy} | {mean(firsts):.0f} ({min(firsts):.0f}-{max(firsts):.0f}) | "
                f"{max(r['p99_first_token_ms'] or 0 for r in mine):.0f} | "
                f"{mean([r['pace_attained'] for r in mine]):.3f} | "
                f"{mean([r['p50_tokens_per_s'] for r in mine]):.0f} | "
                f"{mean(misses):+.3f} ({max(misses):+.3f}) | "
                f"{sum(r['lines_missing_first_token_deadline'] for r in mine)} / "
                f"{sum(r['lines'] for r in mine)} | "
                f"{mean([r['slo_attainment'] for r in mine]):.3f} | "
                f"{mean([r['fallback_rate'] for r in mine]):.3f} | {shares} |")
    return out


def mean_of(value: dict | float | None) -> float | None:
    return value["mean"] if isinstance(value, dict) else value


def targets_summary(rows: list[dict], regret: list[dict]) -> list[str]:
    """Issue 12's targets, counted over the settings of a run (means over the repeats unless
    said): `lego` SLO on the shared traces, its added frame misses, backlogged fill per policy
    (all gaps, inter-frame, intra-frame), the regime target (expected accuracy higher at the
    tables' 3 digits) and the oracle's targets."""
    main = [r for r in rows if r["section"] == "main"]
    lego = [r for r in main if r["policy"] == "lego"]
    out = []
    for npcs, bound in ((1, 0.99), (4, 0.95)):
        mine = [r for r in lego if r["npcs"] == npcs]
        if not mine:
            continue
        met = sum(mean_of(r["slo_attainment"]) >= bound for r in mine)
        out.append(f"- `lego` SLO >= {bound} with {npcs} NPC(s): {met} of {len(mine)} settings")
    for name, pick in (("mean", "mean"), ("largest run", "max")) if lego else ():
        met = sum(r["added_frame_miss_rate"][pick] <= 0.005 for r in lego)
        out.append(f"- `lego` added frame-miss rate <= 0.005 ({name}): {met} of {len(lego)}")
    for policy in POLICIES:
        mine = [r for r in main if r["policy"] == policy]
        if not mine:
            continue
        cells = []
        for key in ("backlogged_fill", "backlogged_fill_inter", "backlogged_fill_intra"):
            values = [v for v in (mean_of(r.get(key)) for r in mine) if v is not None]
            cells.append(f"{sum(values) / len(values):.3f} [{min(values):.3f}, {max(values):.3f}]"
                         if values else "-")
        out.append(f"- backlogged fill, `{policy}` (all / inter-frame / intra-frame, mean "
                   f"[min, max] over the main settings): {' / '.join(cells)}")
    regime = [r for r in rows if r["section"] == "regime" and not r.get("ablation")]
    settings = sorted({(r["trace"], r["npcs"]) for r in regime})
    met = 0
    for key in settings:
        by_policy = {r["policy"]: r for r in regime if (r["trace"], r["npcs"]) == key}
        mine, static = by_policy.get("lego"), by_policy.get("static_skip")
        if mine is None or static is None:
            continue
        slo = mean_of(mine["slo_attainment"])
        met += (slo >= 0.95 and slo >= mean_of(static["slo_attainment"])
                and round(mean_of(mine["expected_accuracy"]), 3)
                > round(mean_of(static["expected_accuracy"]), 3))
    if settings:
        out.append(f"- regime: `lego` SLO >= 0.95 at equal or better SLO and higher expected "
                   f"accuracy than `static_skip`: {met} of {len(settings)} settings")
    if regret:
        low = [mean_of(r["skip_regret"]) <= 0.01 for r in regret]
        near = [mean_of(r["slo_attainment_lego"]) >= mean_of(r["slo_attainment_oracle"]) - 0.01
                for r in regret]
        both = sum(a and b for a, b in zip(low, near, strict=True))
        out.append(f"- skip_regret <= 0.01: {sum(low)} of {len(regret)}; `lego` SLO >= oracle's - "
                   f"0.01: {sum(near)}; both: {both}")
    return out


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks/colocation_cpu.json")
    report = json.loads(path.read_text())
    print(f"command: `{report['command']}`  ")
    print(f"date: {report['date_utc']} UTC, {report['duration_s']} s; machine: "
          f"{report['machine']}; full-model decision {report['decision_cost_ms']} ms\n")
    for title, lines in (("main: SLO / added frame misses / backlogged fill", main_table),
                         ("regime", regime_table), ("ablations", ablation_table)):
        table = lines(report["rows"])
        if len(table) > 2:
            print(f"**{title}**\n")
            print("\n".join(table) + "\n")
    if report.get("mix") == "dialogue":
        print("**dialogue (per run, over traces and repeats)**\n")
        print("\n".join(dialogue_table(report["runs"])) + "\n")
    pressure = backpressure_table(report["runs"])
    if len(pressure) > 2:
        print("**back-pressure at the end of each `lego` regime run**\n")
        print("\n".join(pressure) + "\n")
    if report.get("skip_regret"):
        print("**skip_regret**\n")
        print("\n".join(regret_table(report["skip_regret"])) + "\n")
    print("**issue 12's targets**\n")
    print("\n".join(targets_summary(report["rows"], report.get("skip_regret") or [])))


if __name__ == "__main__":
    main()
