"""CLI `lego-embed bench ...`: the runtime's benchmarks (headroom predictor, co-location)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from lego_embed.engines.colocation_bench import MIXES
from lego_embed.engines.predictor_bench import benchmark_trace
from lego_embed.engines.trace_replay import (
    PassModel,
    all_shared_traces,
    load_trace,
    shared_traces_dir,
)

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
          f"{'MA3 mean %':>10s} {'centred %':>9s} {'best LR %':>9s}")
    for row in rows:
        base = row["baselines"]
        print(f"{row['trace']:42s} {row['window_ms']:7.0f} "
              f"{row['mean_abs_pct_error']:7.2f}/{row['max_abs_pct_error']:7.2f} "
              f"{base['last_value']['mean_abs_pct_error']:11.2f} "
              f"{base['moving_average_3']['mean_abs_pct_error']:10.2f} "
              f"{row['hindsight_centred_mean_abs_pct_error']:9.2f} "
              f"{row['hindsight_linear_abs_pct_error']:9.2f}")
    print(f"wrote {out}")
    return 0


def _load_model_and_bundle(args: argparse.Namespace):
    """The model, its skip bundle (if the model folder has one) and accuracy per level."""
    import torch

    from lego_embed.engines.colocation_bench import accuracy_table, level_accuracies
    from lego_embed.model.loading import load_model, resolve_model_path
    from lego_embed.skip.bundle import SkipBundle

    torch.set_num_threads(1)
    loaded = load_model(args.model)
    bundle_dir = resolve_model_path(args.model) / "skip_bundle"
    bundle = None
    if not args.no_bundle and bundle_dir.is_dir():
        bundle = SkipBundle.load(bundle_dir, loaded)
    table = accuracy_table(Path(args.skip_accuracy)) if args.model == "bundled" else {}
    return loaded, bundle, level_accuracies(bundle, table)


def _core(args: argparse.Namespace) -> int:
    import os

    return args.core if args.core is not None else max(os.sched_getaffinity(0))


def _run_colocation(args: argparse.Namespace) -> int:
    from lego_embed.engines.colocation_bench import (
        ColocationSetting,
        core_priority,
        machine_state,
        run_colocation,
        run_matrix,
        summarize,
    )
    from lego_embed.engines.colocation_plots import (
        DIALOGUE_METRICS,
        SUMMARY_METRICS,
        plot_summary,
        plot_timeline,
    )

    if not args.all and not (args.trace and args.apm and args.policy):
        print("lego-embed bench colocation: give --trace, --apm and --policy, or --all")
        return 2
    loaded, bundle, accuracy = _load_model_and_bundle(args)
    core = _core(args)
    before = machine_state()
    with core_priority(None if args.no_priority else args.priority_nice) as priority:
        if not args.all:
            trace = load_trace(args.trace)
            off = summarize(run_colocation(None, ColocationSetting(
                trace, args.apm, "off", 0, args.seconds), core=core), None)
            setting = ColocationSetting(trace, args.apm, args.policy, args.npcs, args.seconds,
                                        mix=args.mix)
            run = run_colocation(loaded if args.policy != "off" else None, setting, bundle,
                                 accuracy, core)
            print(json.dumps(summarize(run, off["frame_miss_rate"]), indent=2))
            return 0
        traces = all_shared_traces()
        if args.traces:
            traces = [t for t in traces if t.name in args.traces]
        ablation_trace = next((t for t in traces if t.name == args.ablation_trace), traces[0])
        matrix = {}
        if args.apms:
            matrix["apms"] = tuple(args.apms)
        if args.npcs_list:
            matrix["npcs_list"] = tuple(args.npcs_list)
        result = run_matrix(loaded, traces, args.seconds, core, bundle, accuracy,
                            ablation_trace=None if args.no_ablations else ablation_trace,
                            mix=args.mix, **matrix)
    after = machine_state()
    report = {
        "machine": f"{_machine()}, {before['cpus']} CPUs shared with other jobs; render process "
                   f"and LLM worker pinned to core {core}; {priority}",
        "machine_state": {"before": before, "after": after},
        "model": str(loaded.path),
        "skip_levels": 0 if bundle is None else bundle.max_level,
        "command": "lego-embed bench " + " ".join(sys.argv[sys.argv.index("colocation"):]),
        "mix": args.mix,
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "seconds_per_run": args.seconds,
        "pass_model": PassModel().__dict__,
        "runs": result.runs,
        "ablations": result.ablations,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if result.timeline_run is not None:
        plot_timeline(result.timeline_run, out.with_name(out.stem + "_timeline.png"))
    plot_summary(result.runs, out.with_name(out.stem + "_summary.png"),
                 DIALOGUE_METRICS if args.mix == "dialogue" else SUMMARY_METRICS)
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

    colocation = kinds.add_parser(
        "colocation", help="a replayed game and the NPC runtime sharing one CPU core"
    )
    colocation.add_argument("--trace", help="trace name (see bench predictor) or CSV path")
    colocation.add_argument("--apm", type=int, choices=(100, 200, 300))
    colocation.add_argument(
        "--policy", choices=("off", "free", "inter_frame", "static_skip", "lego")
    )
    colocation.add_argument("--npcs", type=int, default=1)
    colocation.add_argument("--seconds", type=float, default=3.0, help="replay length per run")
    colocation.add_argument("--all", action="store_true",
                            help="the whole matrix into --out, with timeline and summary PNGs")
    colocation.add_argument("--traces", nargs="*", help="with --all: only these trace names")
    colocation.add_argument("--ablation-trace", default="rdr2_render_2")
    colocation.add_argument("--model", default="bundled")
    colocation.add_argument("--no-bundle", action="store_true", help="level 0 only")
    colocation.add_argument("--skip-accuracy", default="docs/benchmarks/skip_accuracy.json")
    colocation.add_argument("--core", type=int, default=None, help="default: the last core")
    colocation.add_argument(
        "--priority-nice", type=int, default=-20,
        help="autogroup nice for the benchmark's session while it runs (restored after)",
    )
    colocation.add_argument("--no-priority", action="store_true",
                            help="leave the scheduling priority alone")
    colocation.add_argument("--mix", choices=MIXES, default="decisions",
                            help="decisions: an action per period; dialogue: an action and a "
                                 "streamed bark per period")
    colocation.add_argument("--apms", type=int, nargs="*", choices=(100, 200, 300),
                            help="with --all: only these APMs")
    colocation.add_argument("--npcs-list", type=int, nargs="*",
                            help="with --all: these NPC counts (default 1 4)")
    colocation.add_argument("--no-ablations", action="store_true",
                            help="with --all: skip the feature ablations")
    colocation.add_argument("--out", default="docs/benchmarks/colocation_cpu.json")
    colocation.set_defaults(run=_run_colocation)
