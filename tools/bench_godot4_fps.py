"""FPS of the Godot 4 combat demo with the NPC LLM on and off, repeated in shuffled order.

Runs ``demo_game_godot4/run_demo.sh`` (60 s per run unless --seconds) ``--repeats`` times per
condition, conditions shuffled, and writes every run's report fields plus the machine's load
average before and after each run to ``docs/benchmarks/godot4_fps.json`` and a per-run chart to
``docs/benchmarks/godot4_fps.png``. Prints a table of means and standard deviations.

Usage: ``.venv/bin/python tools/bench_godot4_fps.py [--repeats 3] [--seconds 60] [--seed 0]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo_game_godot4" / "run_demo.sh"
REPORTS = REPO / "docs" / "demo" / "godot4"
OUT_JSON = REPO / "docs" / "benchmarks" / "godot4_fps.json"
OUT_PNG = REPO / "docs" / "benchmarks" / "godot4_fps.png"
FIELDS = ("fps_mean", "fps_p50", "fps_p1", "p99_frame_ms", "frames", "decisions",
          "invalid_actions", "slo_attainment", "p50_action_ms", "p99_action_ms")
CONDITIONS = {"llm_off": ("--llm-off", "report_llm_off.json"), "llm_on": ("", "report.json")}


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def run_once(condition: str, seconds: int) -> dict:
    """One demo run; returns the report's fields, the renderer and the load around it."""
    flag, report_name = CONDITIONS[condition]
    before = loadavg()
    start = time.time()
    subprocess.run([str(DEMO), *([flag] if flag else [])], check=True,
                   env={**os.environ, "LEGO_DEMO_SECONDS": str(seconds)},
                   stdout=subprocess.DEVNULL)
    report = json.loads((REPORTS / report_name).read_text())
    return {
        "condition": condition,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
        "loadavg_before": before,
        "loadavg_after": loadavg(),
        "renderer": report["renderer"],
        "engine": report["engine"],
        **{field: report[field] for field in FIELDS},
        "bridge_us_per_frame_mean": report["bridge_main_thread_us_per_frame"]["mean_us"],
        "gpu_busy_ms_p50": (report.get("gpu_timestamps") or {}).get("busy_ms_p50"),
    }


def summary(runs: list[dict]) -> dict:
    """Mean and standard deviation of each field per condition."""
    result = {}
    for condition in CONDITIONS:
        rows = [r for r in runs if r["condition"] == condition]
        result[condition] = {
            field: {"mean": statistics.fmean(r[field] for r in rows),
                    "sd": statistics.stdev(r[field] for r in rows) if len(rows) > 1 else 0.0}
            for field in ("fps_mean", "fps_p50", "fps_p1", "p99_frame_ms")
        }
    return result


def plot(runs: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for condition, color in (("llm_off", "tab:gray"), ("llm_on", "tab:blue")):
        xs = [i for i, r in enumerate(runs) if r["condition"] == condition]
        ax.scatter(xs, [runs[i]["fps_p50"] for i in xs], color=color, label=f"{condition} p50")
        ax.scatter(xs, [runs[i]["fps_p1"] for i in xs], color=color, marker="v",
                   label=f"{condition} p1")
    ax.set_xlabel("run (shuffled order)")
    ax.set_ylabel("FPS")
    ax.set_title(f"Godot 4 demo, {runs[0]['renderer']}", fontsize=9)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(OUT_PNG, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    order = [c for c in CONDITIONS for _ in range(args.repeats)]
    random.Random(args.seed).shuffle(order)
    runs = [run_once(condition, args.seconds) for condition in order]
    result = {"command": f"tools/bench_godot4_fps.py --repeats {args.repeats} --seconds "
                         f"{args.seconds} --seed {args.seed}",
              "cpu_cores": os.cpu_count(), "runs": runs, "summary": summary(runs)}
    OUT_JSON.write_text(json.dumps(result, indent=2) + "\n")
    plot(runs)
    for condition, fields in result["summary"].items():
        print(condition, {k: f"{v['mean']:.2f} +- {v['sd']:.2f}" for k, v in fields.items()})


if __name__ == "__main__":
    main()
