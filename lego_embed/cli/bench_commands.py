"""CLI `lego-embed bench ...`: the runtime's benchmarks (headroom predictor, co-location)."""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from lego_embed.engines.predictor_bench import benchmark_trace
from lego_embed.engines.trace_replay import all_shared_traces, shared_traces_dir

SLO_WINDOWS_MS = (200.0, 300.0, 600.0)


def _machine() -> str:
    return f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip()


def _run_predictor(args: argparse.Namespace) -> int:
    traces = all_shared_traces(Path(args.traces_dir) if args.traces_dir else None)
    rows = [benchmark_trace(trace, window_ms) for window_ms in args.window_ms for trace in traces]
    report = {
        "command": "lego-embed bench predictor",
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "traces_dir": str(args.traces_dir or shared_traces_dir()),
        "traces": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'trace':42s} {'window':>7s} {'LR mean/max %':>15s} {'last mean %':>11s} "
          f"{'MA3 mean %':>10s} {'hindsight %':>11s}")
    for row in rows:
        base = row["baselines"]
        print(f"{row['trace']:42s} {row['window_ms']:7.0f} "
              f"{row['mean_abs_pct_error']:7.2f}/{row['max_abs_pct_error']:7.2f} "
              f"{base['last_value']['mean_abs_pct_error']:11.2f} "
              f"{base['moving_average_3']['mean_abs_pct_error']:10.2f} "
              f"{row['hindsight_centred_mean_abs_pct_error']:11.2f}")
    print(f"wrote {out}")
    return 0


def register(subcommands: argparse._SubParsersAction) -> None:
    """Adds `bench predictor` and `bench colocation`."""
    bench = subcommands.add_parser("bench", help="runtime benchmarks on the shared game traces")
    kinds = bench.add_subparsers(dest="bench", required=True)
    predictor = kinds.add_parser(
        "predictor", help="next-window headroom prediction error on every shared trace"
    )
    predictor.add_argument("--traces-dir", default=None, help="default: ../shared/traces")
    predictor.add_argument(
        "--window-ms", type=float, nargs="+", default=list(SLO_WINDOWS_MS),
        help="execution window lengths (SLO periods) in ms",
    )
    predictor.add_argument("--out", default="docs/benchmarks/predictor.json")
    predictor.set_defaults(run=_run_predictor)
