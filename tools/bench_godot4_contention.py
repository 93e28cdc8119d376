"""The Godot 4 combat demo on a quiet machine and beside a CPU thief, repeated in shuffled order.

The demo's model runs in the frame's idle time, so anything that slows the game's own work (other
processes, or a hypervisor that takes CPU time: ``cpu_steal_share`` in the report) shrinks it.
Each run is ``demo_game_godot4/run_demo.sh`` (60 s unless --seconds), either on the quiet machine
or with one thief process per CPU core that is busy ``--busy-ms`` of every ``--period-ms``
(each in its own session, so in its own Linux autogroup, like another program's). Headless with
the bot player. Writes every run's figures to ``docs/benchmarks/godot4_contention.json`` (after
each run, so a failed run keeps the ones before) and a chart to
``docs/benchmarks/godot4_contention.png``, and prints the median [min, max] per condition. The
demo's own ``docs/demo/godot4/report.json`` and ``screenshot.png`` are put back as they were.

Figures per run: how many of the enemies' action slots the model filled by the deadline
(``model_on_time_share``), the model's SLO over what it was asked, the p99 time from request to
the enemy's action (the model's or the fallback's), fallbacks, late model answers, rule-driven
actions (the model budget), skipped timeline slots, FPS and the steal share.

Usage: ``.venv/bin/python tools/bench_godot4_contention.py [--repeats 3] [--seconds 60]
[--busy-ms 4] [--period-ms 20] [--seed 0]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo_game_godot4" / "run_demo.sh"
REPORT = REPO / "docs" / "demo" / "godot4" / "report.json"
SCREENSHOT = REPO / "docs" / "demo" / "godot4" / "screenshot.png"
OUT_JSON = REPO / "docs" / "benchmarks" / "godot4_contention.json"
OUT_PNG = REPO / "docs" / "benchmarks" / "godot4_contention.png"
CONDITIONS = ("quiet", "thief")
FIELDS = ("slo_attainment", "p99_action_ms", "decisions", "fallbacks", "late_model_answers",
          "scripted_actions", "skipped_requests", "lines_spoken", "fps_p50", "p99_frame_ms",
          "cpu_steal_share")
SUMMARY = ("model_on_time_share", "slo_attainment", "p99_action_ms", "fallbacks",
           "late_model_answers", "scripted_actions", "skipped_requests", "cpu_steal_share")
THIEF = ("import sys, time\n"
         "busy, period = float(sys.argv[1]) / 1e3, float(sys.argv[2]) / 1e3\n"
         "while True:\n"
         "    t0 = time.perf_counter()\n"
         "    while time.perf_counter() - t0 < busy:\n"
         "        pass\n"
         "    time.sleep(max(0.0, period - (time.perf_counter() - t0)))\n")


def loadavg() -> str:
    """The machine's /proc/loadavg line."""
    return Path("/proc/loadavg").read_text().strip()


def run_once(condition: str, seconds: int, busy_ms: float, period_ms: float) -> dict:
    """One demo run, beside the thieves when condition is "thief"; the report's figures."""
    thieves = [
        subprocess.Popen([sys.executable, "-c", THIEF, str(busy_ms), str(period_ms)],
                         start_new_session=True)
        for _ in range(os.cpu_count() or 1)
    ] if condition == "thief" else []
    before = loadavg()
    start = time.time()
    try:
        subprocess.run([str(DEMO)], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "LEGO_DEMO_SECONDS": str(seconds),
                            "LEGO_DEMO_HEADLESS": "1"})
    finally:
        for thief in thieves:
            thief.kill()
            thief.wait()
    report = json.loads(REPORT.read_text())
    answered = report["decisions"] + report["decision_failures"]
    on_time = round(report["slo_attainment"] * answered)
    slots = report["requests_sent"] + report["skipped_requests"] + report["scripted_actions"]
    return {
        "condition": condition,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
        "loadavg_before": before,
        "loadavg_after": loadavg(),
        **{field: report[field] for field in FIELDS},
        "model_on_time_share": on_time / slots if slots else 0.0,
        "model_budget": report["model_budget"],
        "inter_frame_gap_ms": report["runtime_stats"].get("runtime", {})
        .get("slot_estimates_ms", {}).get("inter_frame"),
    }


def summary(runs: list[dict]) -> dict:
    """Median, min and max of each summary figure per condition."""
    result = {}
    for condition in CONDITIONS:
        rows = [r for r in runs if r["condition"] == condition]
        result[condition] = {
            field: {"median": statistics.median(r[field] for r in rows),
                    "min": min(r[field] for r in rows), "max": max(r[field] for r in rows)}
            for field in SUMMARY
        } if rows else {}
    return result


def plot(runs: list[dict], title: str) -> None:
    """Per run: the share of slots the model filled on time, and the p99 request -> action."""
    fig, (share_ax, p99_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for condition, color in (("quiet", "tab:blue"), ("thief", "tab:red")):
        rows = [(i, r) for i, r in enumerate(runs) if r["condition"] == condition]
        xs = [i for i, _ in rows]
        share_ax.scatter(xs, [r["model_on_time_share"] for _, r in rows], color=color,
                         label=condition)
        for i, r in rows:
            share_ax.annotate(f"steal {r['cpu_steal_share']:.3f}", (i, r["model_on_time_share"]),
                              textcoords="offset points", xytext=(4, -10), fontsize=7)
        p99_ax.scatter(xs, [r["p99_action_ms"] for _, r in rows], color=color, label=condition)
    share_ax.set_ylabel("action slots the model filled on time")
    share_ax.set_ylim(0, 1.05)
    p99_ax.set_ylabel("p99 request -> action (ms)")
    p99_ax.axhline(300, color="gray", linestyle="--", linewidth=1)
    for ax in (share_ax, p99_ax):
        ax.set_xlabel("run (shuffled order)")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT_PNG, dpi=120)


def main() -> None:
    """Runs the shuffled conditions and writes the JSON and the chart (see the module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--busy-ms", type=float, default=4.0)
    parser.add_argument("--period-ms", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    order = [c for c in CONDITIONS for _ in range(args.repeats)]
    random.Random(args.seed).shuffle(order)
    command = " ".join(["tools/bench_godot4_contention.py", *sys.argv[1:]])
    result = {"command": command, "cpu_cores": os.cpu_count(),
              "thief": {"busy_ms": args.busy_ms, "period_ms": args.period_ms,
                        "processes": os.cpu_count()},
              "runs": []}
    kept = {path: path.read_bytes() for path in (REPORT, SCREENSHOT) if path.exists()}
    try:
        for condition in order:
            result["runs"].append(run_once(condition, args.seconds, args.busy_ms,
                                           args.period_ms))
            result["summary"] = summary(result["runs"])
            OUT_JSON.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        for path, content in kept.items():
            path.write_bytes(content)
    runs = result["runs"]
    plot(runs, f"Godot 4 demo, quiet and beside {os.cpu_count()} CPU thieves "
               f"({args.busy_ms:g} of every {args.period_ms:g} ms)")
    for condition, fields in result["summary"].items():
        print(condition, {k: f"{v['median']:.3f} [{v['min']:.3f}, {v['max']:.3f}]"
                          for k, v in fields.items()})


if __name__ == "__main__":
    main()
