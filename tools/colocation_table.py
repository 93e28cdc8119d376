"""Markdown tables for docs/BENCHMARKS.md from a `lego-embed bench colocation --all` JSON.

Usage: .venv/bin/python tools/colocation_table.py [docs/benchmarks/colocation_cpu.json]
Cells are mean [min, max] over the repeats.
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
    if report.get("skip_regret"):
        print("**skip_regret**\n")
        print("\n".join(regret_table(report["skip_regret"])))


if __name__ == "__main__":
    main()
