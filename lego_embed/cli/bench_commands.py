"""CLI `lego-embed bench ...`: the runtime's benchmarks (headroom predictor, co-location,
co-location with a render hitch)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from lego_embed.bench.colocation import MIXES
from lego_embed.bench.predictor import benchmark_trace
from lego_embed.engines.trace_replay import (
    PassModel,
    all_shared_traces,
    load_trace,
    shared_traces_dir,
)

SLO_WINDOWS_MS = (200.0, 300.0, 600.0)


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

    from lego_embed.bench.colocation import accuracy_table, level_accuracies
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


def _command_line() -> str:
    """The exact command that is running, as a shell line."""
    return shlex.join(["lego-embed", *sys.argv[1:]])


def _run_colocation(args: argparse.Namespace) -> int:
    from lego_embed.bench.colocation import ColocationSetting, summarize
    from lego_embed.bench.colocation_plots import (
        DIALOGUE_METRICS,
        SUMMARY_METRICS,
        plot_regime,
        plot_summary,
        plot_timeline,
    )
    from lego_embed.bench.hitch import Hitch
    from lego_embed.bench.machine import core_priority, machine_state, machine_summary
    from lego_embed.bench.matrix import MatrixPlan, decision_cost_ms, real_runner, run_matrix
    from lego_embed.bench.simulated import simulated_decision_ms, simulated_runner

    if not args.all and not (args.trace and args.apm and args.policy):
        print("lego-embed bench colocation: give --trace, --apm and --policy, or --all")
        return 2
    if args.decision_cost_ms is not None and not args.decision_cost_ms > 0:
        print("lego-embed bench colocation: --decision-cost-ms must be a positive number of ms")
        return 2
    if not args.simulated and (args.costs or args.jitter is not None):
        print("lego-embed bench colocation: --costs and --jitter are for --simulated runs")
        return 2
    loaded, bundle, accuracy = _load_model_and_bundle(args)
    core = _core(args)
    costs = _simulated_costs(args, loaded, bundle) if args.simulated else None
    runner = (real_runner(bundle, accuracy, core) if costs is None
              else simulated_runner(costs, bundle, accuracy))
    if not args.all:
        with core_priority(None if args.no_priority else args.priority_nice):
            trace = load_trace(args.trace)
            hitches = tuple(Hitch.parse(spec) for spec in args.hitch)
            off = summarize(runner(None, ColocationSetting(
                trace, args.apm, "off", 0, args.seconds, hitches=hitches), 0), None)
            setting = ColocationSetting(trace, args.apm, args.policy, args.npcs, args.seconds,
                                        hitches=hitches, mix=args.mix)
            run = runner(loaded if args.policy != "off" else None, setting, 0)
        row = summarize(run, off["frame_miss_rate"])
        if costs is not None:
            row["simulated_costs"] = costs.to_json()
        print(json.dumps(row, indent=2))
        return 0
    traces = all_shared_traces()
    if args.traces:
        traces = [t for t in traces if t.name in args.traces]
    sections = set(args.sections)
    plan = MatrixPlan(
        seconds=args.seconds, repeats=args.repeats,
        apms=tuple(args.apms) if "main" in sections else (), npcs_list=tuple(args.npcs_list),
        regime_traces=tuple(args.regime_traces) if "regime" in sections else (),
        regime_ratios=tuple(args.regime_ratios),
        ablation_trace=args.ablation_trace if "ablation" in sections else None, mix=args.mix,
    )
    started = datetime.now(timezone.utc)
    before = machine_state()
    with core_priority(None if args.no_priority else args.priority_nice) as priority:
        measured_ms = (decision_cost_ms(loaded) if costs is None
                       else simulated_decision_ms(loaded, costs))
        cost_ms = args.decision_cost_ms or measured_ms
        where = "on this machine" if costs is None else "on the simulated device"
        print(f"{plan.runs(traces)} runs of {plan.seconds:g} s; full-model decision "
              f"{measured_ms:.1f} ms {where}, regime set for {cost_ms:.2f} ms")
        result = run_matrix(loaded, traces, plan, core, cost_ms, bundle, accuracy,
                            runner=runner)
    after = machine_state()
    machine = (f"{machine_summary(before, after)}; render process and LLM worker pinned to "
               f"core {core}; {priority}")
    if costs is not None:
        machine = ("simulated clock and device (bench.simulated; outcomes do not depend on "
                   f"the machine's load); the machine that ran it: "
                   f"{machine_summary(before, after)}")
    report = {
        "command": _command_line(),
        "date_utc": started.strftime("%Y-%m-%d %H:%M"),
        "duration_s": round((datetime.now(timezone.utc) - started).total_seconds()),
        "clock": "real" if costs is None else "simulated",
        "machine": machine,
        "machine_state": {"before": before, "after": after},
        "model": str(loaded.path),
        "skip_levels": 0 if bundle is None else bundle.max_level,
        "accuracy_by_level": accuracy,
        "plan": result.extra["plan"],
        "seconds_per_run": plan.seconds,
        "repeats": plan.repeats,
        "mix": plan.mix,
        "decision_cost_ms": round(cost_ms, 3),
        "measured_decision_cost_ms": round(measured_ms, 3),
        "pass_model": PassModel().__dict__,
        "regime": result.regime,
        "rows": result.rows,
        "skip_regret": result.skip_regret,
        "runs": result.runs,
    }
    if costs is not None:
        report["simulated_costs"] = costs.to_json()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if result.timeline_run is not None:
        plot_timeline(result.timeline_run, out.with_name(out.stem + "_timeline.png"))
    main_runs = [r for r in result.runs if r["section"] in ("main", "off")]
    if any(r["section"] == "main" for r in main_runs):
        plot_summary(main_runs, out.with_name(out.stem + "_summary.png"),
                     DIALOGUE_METRICS if plan.mix == "dialogue" else SUMMARY_METRICS)
    if result.skip_regret or any(r["section"] == "regime" for r in result.rows):
        plot_regime(result.rows, out.with_name(out.stem + "_regime.png"))
    print(f"wrote {out}")
    return 0


def _simulated_costs(args: argparse.Namespace, loaded, bundle):
    """The simulated device's costs: from --costs, or measured now; --jitter overrides."""
    from lego_embed.bench.simulated import SubtaskCosts, calibrate_costs

    costs = SubtaskCosts.load(args.costs) if args.costs else calibrate_costs(loaded, bundle)
    if args.jitter is not None:
        costs = replace(costs, jitter=args.jitter)
    return costs


def _run_hitch(args: argparse.Namespace) -> int:
    from lego_embed.bench.colocation_plots import plot_hitch
    from lego_embed.bench.hitch import Hitch
    from lego_embed.bench.hitch_scenario import hitch_summary, run_hitch_scenario
    from lego_embed.bench.machine import core_priority, machine_state, machine_summary

    hitches = tuple(Hitch.parse(spec) for spec in args.hitch)
    trace = load_trace(args.trace)
    loaded, bundle, accuracy = _load_model_and_bundle(args)
    core = _core(args)
    policies = tuple(args.policies)
    before = machine_state()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    with core_priority(None if args.no_priority else args.priority_nice) as priority:
        result = run_hitch_scenario(loaded, trace, args.apm, args.npcs, args.seconds, hitches,
                                    core, bundle, accuracy, policies, args.repeats)
    after = machine_state()
    summary = hitch_summary(result.rows)
    command = _command_line()
    report = {
        "machine": f"{machine_summary(before, after)}; render process and LLM worker pinned to "
                   f"core {core}; {priority}",
        "machine_state": {"before": before, "after": after},
        "model": str(loaded.path),
        "skip_levels": 0 if bundle is None else bundle.max_level,
        "command": command,
        "date_utc": started,
        "trace": trace.name,
        "hitches": [{"at_s": h.at_s, "ms": h.ms} for h in hitches],
        "pass_model": PassModel().__dict__,
        "summary": summary,
        "runs": result.rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot_hitch(result.runs, summary, out.with_suffix(".png"))
    print(f"{'policy':12s} {'SLO after hitch':>22s} {'first decision ms':>24s} "
          f"{'SLO':>6s} {'added miss':>10s} {'restarts':>8s}")
    for entry in summary:
        after_hitch = entry["slo_attainment_after_hitch"] or {}
        first = entry["first_decision_after_hitch_ms"] or {}
        print(f"{entry['policy']:12s} {after_hitch.get('median')!s:>8s} "
              f"[{after_hitch.get('min')}, {after_hitch.get('max')}] {first.get('median')!s:>10s} "
              f"[{first.get('min')}, {first.get('max')}] "
              f"{(entry['slo_attainment'] or {}).get('median')!s:>6s} "
              f"{(entry['added_frame_miss_rate'] or {}).get('median')!s:>10s} "
              f"{entry['worker_restarts']:>8d}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Model, core and priority options shared by the co-location benchmarks."""
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--no-bundle", action="store_true", help="level 0 only")
    parser.add_argument("--skip-accuracy", default="docs/benchmarks/skip_accuracy.json")
    parser.add_argument("--core", type=int, default=None, help="default: the last core")
    parser.add_argument(
        "--priority-nice", type=int, default=-20,
        help="autogroup nice for the benchmark's session while it runs (restored after)",
    )
    parser.add_argument("--no-priority", action="store_true",
                        help="leave the scheduling priority alone")


def register(subcommands: argparse._SubParsersAction) -> None:
    """Adds `bench predictor`, `bench colocation` and `bench hitch`."""
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
        "--policy", choices=("off", "free", "inter_frame", "static_skip", "lego", "oracle")
    )
    colocation.add_argument("--npcs", type=int, default=1)
    colocation.add_argument("--seconds", type=float, default=5.0, help="replay length per run")
    colocation.add_argument("--all", action="store_true",
                            help="the whole matrix into --out, with timeline, summary and "
                                 "regime PNGs")
    colocation.add_argument("--repeats", type=int, default=3,
                            help="with --all: runs of every setting, each block in a new order")
    colocation.add_argument("--sections", nargs="+", default=["main", "regime", "ablation"],
                            choices=("main", "regime", "ablation"),
                            help="with --all: which parts of the matrix to run")
    colocation.add_argument("--traces", nargs="*", help="with --all: only these trace names")
    colocation.add_argument("--apms", type=int, nargs="+", default=[100, 200, 300],
                            help="with --all: the main section's APMs")
    colocation.add_argument("--regime-traces", nargs="+",
                            default=["blackmyth_render_1", "ffxvi_render_1", "rdr2_render_2"],
                            help="with --all: traces of the LEGO-regime section")
    colocation.add_argument("--regime-ratios", type=float, nargs="+", default=[1.0, 1.25, 1.5],
                            help="with --all: full-model demand / usable headroom to run at")
    colocation.add_argument("--decision-cost-ms", type=float,
                            help="with --all: the full model's compute per decision (ms) that "
                                 "sets the regime's NPC counts (default: measured at the start; "
                                 "give an earlier run's to repeat its settings)")
    colocation.add_argument("--ablation-trace", default="blackmyth_render_1")
    colocation.add_argument(
        "--hitch", nargs="*", default=[], metavar="MS@S",
        help="single runs: inject a frame of MS ms render time S seconds into the replay",
    )
    _add_run_options(colocation)
    colocation.add_argument("--mix", choices=MIXES, default="decisions",
                            help="decisions: an action per period; dialogue: an action and a "
                                 "streamed bark per period")
    colocation.add_argument("--npcs-list", type=int, nargs="+", default=[1, 4],
                            help="with --all: the main section's NPC counts")
    colocation.add_argument(
        "--simulated", action="store_true",
        help="run on a simulated clock: the real model and runtime, subtask costs modelled "
             "(reproducible, independent of the machine's load; see bench.simulated)")
    colocation.add_argument("--costs", help="with --simulated: the subtask costs to charge, "
                            "from an earlier --simulated result (default: measured now)")
    colocation.add_argument("--jitter", type=float,
                            help="with --simulated: sigma of the log of each subtask's cost "
                                 "noise (default 0.1, or the --costs file's)")
    colocation.add_argument("--out", default="docs/benchmarks/colocation_cpu.json")
    colocation.set_defaults(run=_run_colocation)

    hitch = kinds.add_parser(
        "hitch", help="co-location with injected long frames (hitches), every policy side by side"
    )
    hitch.add_argument("--trace", default="blackmyth_render_1",
                       help="trace name (see bench predictor) or CSV path")
    hitch.add_argument("--apm", type=int, default=300, choices=(100, 200, 300))
    hitch.add_argument("--npcs", type=int, default=1)
    hitch.add_argument("--seconds", type=float, default=10.0, help="replay length per run")
    hitch.add_argument(
        "--hitch", nargs="+", default=["745@4"], metavar="MS@S",
        help="injected frames: MS ms of render time at S seconds into the replay (default 745@4: "
             "one 745 ms frame, 4 s in)",
    )
    hitch.add_argument("--policies", nargs="+", default=["free", "inter_frame", "static_skip",
                                                        "lego"],
                       choices=("free", "inter_frame", "static_skip", "lego"))
    hitch.add_argument("--repeats", type=int, default=1,
                       help="repeat the whole comparison, each time in a new shuffled order")
    _add_run_options(hitch)
    hitch.add_argument("--out", default="docs/benchmarks/colocation_hitch.json")
    hitch.set_defaults(run=_run_hitch)
