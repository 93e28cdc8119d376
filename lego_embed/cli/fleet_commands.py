"""CLI commands of the fleet planner: `lego-embed fleet calibrate|validate|dataset|train|plan|
simulate|bench`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_CALIBRATION = (Path(__file__).resolve().parents[1] / "assets" / "fleet"
                       / "qwen25_7b_h100_64gb.calibration.json")
DEFAULT_SURROGATE = DEFAULT_CALIBRATION.parent / "qwen25_7b_h100_64gb.surrogate.json"
DEFAULT_SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DEFAULT_CACHE = Path("/tmp/lego_embed_fleet_validation.jsonl")


def register(subcommands: argparse._SubParsersAction) -> None:
    """Adds `fleet` and its subcommands."""
    fleet = subcommands.add_parser("fleet", help="plan NPC LoRA adapters on a vLLM GPU fleet")
    sub = fleet.add_subparsers(dest="fleet_command", required=True)

    p = sub.add_parser("calibrate", help="component file -> twin calibration")
    p.add_argument("components", type=Path, help="component file (format of components_qwen.json)")
    p.add_argument("--runs", type=Path, default=None,
                   help="calibration_runs.csv to fit the few global corrections on")
    p.add_argument("--corrections-from", type=Path, default=None,
                   help="reuse the corrections of an existing calibration file")
    p.add_argument("--out", type=Path, default=DEFAULT_CALIBRATION)
    p.set_defaults(run=_calibrate)

    p = sub.add_parser("validate", help="twin vs real end-to-end runs (throughput MAPE)")
    p.add_argument("runs", type=Path, nargs="+", help="calibration_runs*.csv files")
    p.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION)
    p.add_argument("--duration", type=float, default=None, help="simulated s (default: as run)")
    p.add_argument("--out", type=Path, default=None, help="write per-run rows as JSON")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help="per-run twin results, reused when the calibration is unchanged")
    p.set_defaults(run=_validate)

    p = sub.add_parser("dataset", help="sample instance configurations in the twin (resumable)")
    p.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION)
    p.add_argument("--out", type=Path, required=True, help="JSONL file (appended to)")
    p.add_argument("--samples", type=int, default=1200)
    p.add_argument("--duration", type=float, default=900.0, help="simulated s per sample")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_dataset)

    p = sub.add_parser("train", help="teacher forests distilled into small trees")
    p.add_argument("dataset", type=Path)
    p.add_argument("--out", type=Path, default=DEFAULT_SURROGATE)
    p.add_argument("--max-depth", type=int, default=10)
    p.add_argument("--trees", type=int, default=200, help="trees per teacher forest")
    p.set_defaults(run=_train)

    p = sub.add_parser("plan", help="place a workload's adapters on the fewest GPUs")
    p.add_argument("workload", type=Path, help="workload YAML/JSON")
    p.add_argument("--out", type=Path, required=True, help="plan directory to write")
    p.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION)
    p.add_argument("--surrogate", type=Path, default=DEFAULT_SURROGATE)
    p.add_argument("--verify-duration", type=float, default=1800.0,
                   help="simulated s per GPU in the twin check")
    p.add_argument("--model-id", default="Qwen/Qwen2.5-7B-Instruct")
    p.add_argument("--adapter-dir", default="adapters", help="where the LoRA folders live")
    p.set_defaults(run=_plan)

    p = sub.add_parser("simulate", help="replay a plan directory in the twin")
    p.add_argument("plan", type=Path)
    p.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION)
    p.add_argument("--duration", type=float, default=3600.0)
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(run=_simulate)

    p = sub.add_parser("bench", help="validation + surrogate + placement -> fleet.json, plots")
    p.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION)
    p.add_argument("--surrogate", type=Path, default=DEFAULT_SURROGATE)
    p.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks/fleet.json"))
    p.add_argument("--verify-duration", type=float, default=1800.0)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help="per-run validation results from `fleet validate`")
    p.set_defaults(run=_bench)


def _calibrate(args: argparse.Namespace) -> int:
    from lego_embed.fleet.calibration import calibrate, load_calibration
    from lego_embed.fleet.validation import fit_corrections, load_runs

    calibration = calibrate(args.components)
    if args.corrections_from is not None:
        calibration = calibration.with_corrections(
            load_calibration(args.corrections_from).corrections)
    if args.runs is not None:
        calibration = fit_corrections(load_runs(args.runs), calibration, log=print)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    calibration.save(args.out)
    print(f"wrote {args.out}: {calibration.corrections}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lego_embed.fleet.calibration import load_calibration
    from lego_embed.fleet.validation import load_runs, validate

    calibration = load_calibration(args.calibration)
    rows = {}
    for path in args.runs:
        runs = load_runs(path)
        with tqdm(total=sum(1 for r in runs if r.ok or r.infeasible), desc=path.name) as bar:
            report = validate(runs, calibration, duration_s=args.duration, progress=bar.update,
                              cache_path=args.cache)
        print(f"{path.name}: throughput MAPE {report.throughput_mape:.4f} over {report.n_ok} ok "
              f"runs, starvation agreement {report.starvation_agreement:.3f}, infeasible "
              f"detected {report.infeasible_detected}/{report.infeasible_total}, false memory "
              f"errors {report.false_memory_errors}, ITL MAPE {report.itl_mape:.3f}")
        rows[path.name] = report.rows
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def _dataset(args: argparse.Namespace) -> int:
    from lego_embed.fleet.calibration import load_calibration
    from lego_embed.fleet.surrogate import DatasetConfig, generate_dataset

    config = DatasetConfig(n_samples=args.samples, duration_s=args.duration, seed=args.seed)
    n = generate_dataset(args.out, config, load_calibration(args.calibration), args.workers)
    print(f"{args.out}: {n} samples")
    return 0


def _train(args: argparse.Namespace) -> int:
    from lego_embed.fleet.surrogate import train_surrogate

    surrogate = train_surrogate(args.dataset, max_depth=args.max_depth, n_trees=args.trees)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    surrogate.save(args.out)
    print(f"wrote {args.out}: {json.dumps(surrogate.metrics)}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from lego_embed.fleet.bench import plan_workload
    from lego_embed.fleet.calibration import load_calibration
    from lego_embed.fleet.spec import load_workload
    from lego_embed.fleet.surrogate import Surrogate
    from lego_embed.fleet.vllm_output import write_plan

    workload = load_workload(args.workload)
    plan = plan_workload(workload, load_calibration(args.calibration),
                         Surrogate.load(args.surrogate), args.verify_duration)
    files = write_plan(plan, workload, args.out, model_id=args.model_id,
                       adapter_dir=args.adapter_dir)
    print(f"{workload.name}: {len(workload.adapters)} adapters on {plan.n_gpus} GPUs "
          f"({plan.starving_gpus} starving in the twin, {plan.repairs} repairs)")
    for f in files:
        print(f"wrote {f}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from lego_embed.fleet.calibration import load_calibration
    from lego_embed.fleet.replay import replay_plan
    from lego_embed.fleet.vllm_output import read_plan

    plan, workload = read_plan(args.plan)
    report = replay_plan(plan, workload, load_calibration(args.calibration), args.duration,
                         args.seed, args.plan)
    for line in report:
        print(line)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from lego_embed.fleet.bench import run_benchmark
    from lego_embed.fleet.calibration import load_calibration
    from lego_embed.fleet.surrogate import Surrogate

    result = run_benchmark(load_calibration(args.calibration), Surrogate.load(args.surrogate),
                           args.shared, args.out, args.verify_duration, progress=print,
                           cache_path=args.cache)
    print(json.dumps(result, indent=1))
    return 0
