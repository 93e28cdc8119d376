"""CLI commands of the fleet planner: `lego-embed fleet calibrate|validate|dataset|train|
workload|plan|simulate|bench`. `plan` exits 0 for a plan within its targets, 2 for bad input,
3 (EXIT_INFEASIBLE) for a workload the cluster cannot serve within its targets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lego_embed.fleet.surrogate import Surrogate

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "fleet"
DEFAULT_CALIBRATION = ASSETS / "qwen-2.5-7b-instruct__h100-64gb.calibration.json"
DEFAULT_SURROGATE = ASSETS / "qwen-2.5-7b-instruct__h100-64gb.surrogate.json"
DEFAULT_SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DEFAULT_CACHE = Path("/tmp/lego_embed_fleet_validation.jsonl")
EXIT_INFEASIBLE = 3


def register(subcommands: argparse._SubParsersAction) -> None:
    """Adds `fleet` and its subcommands."""
    fleet = subcommands.add_parser("fleet", help="plan NPC LoRA adapters on a vLLM GPU fleet")
    sub = fleet.add_subparsers(dest="fleet_command", required=True)

    p = sub.add_parser("calibrate", help="component file -> twin calibration of a model on a GPU")
    p.add_argument("components", type=Path, help="component file (format of components_qwen.json)")
    p.add_argument("--gpu", required=True, help="name of the GPU the components were measured on")
    p.add_argument("--base-model", default=None, help="model name (default: the file's 'model')")
    p.add_argument("--hf-model-id", default=None, help="model to serve (default: the file's)")
    p.add_argument("--vllm-version", default=None, help="default: the version the file names")
    p.add_argument("--model-max-len", type=int, default=32768,
                   help="the model's longest context (tokens)")
    p.add_argument("--runs", type=Path, default=None,
                   help="calibration_runs.csv to fit the few global corrections on")
    p.add_argument("--workers", type=int, default=2, help="processes for the fit's twin runs")
    p.add_argument("--corrections-from", type=Path, default=None,
                   help="reuse the corrections of an existing calibration file")
    p.add_argument("--out", type=Path, default=ASSETS,
                   help="calibration file, or a directory to write <model>__<gpu>.calibration.json")
    p.set_defaults(run=_calibrate)

    p = sub.add_parser("validate", help="twin vs real end-to-end runs (throughput, TTFT, ITL)")
    p.add_argument("runs", type=Path, nargs="+", help="calibration_runs*.csv files")
    p.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION)
    p.add_argument("--duration", type=float, default=None, help="simulated s (default: as run)")
    p.add_argument("--out", type=Path, default=None, help="write per-run rows as JSON")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help="per-run twin results, reused when the calibration is unchanged")
    p.add_argument("--workers", type=int, default=1, help="processes simulating runs")
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

    p = sub.add_parser("workload", help="write a synthetic NPC workload file to start from")
    p.add_argument("--out", type=Path, required=True, help="workload YAML to write")
    p.add_argument("--name", default="npc_town")
    p.add_argument("--adapters", type=int, default=300)
    p.add_argument("--total-rate", type=float, default=30.0, help="req/s over all adapters")
    p.add_argument("--zipf", type=float, default=1.0, help="popularity skew (0 = uniform)")
    p.add_argument("--ranks", default="8:0.5,16:0.3,32:0.2", help="rank:weight,...")
    p.add_argument("--base-model", default="qwen-2.5-7b-instruct")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--ttft-p99-ms", type=float, default=None)
    p.add_argument("--itl-p99-ms", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_workload)

    p = sub.add_parser("plan", help="place a workload's adapters on the fewest GPUs of a cluster")
    p.add_argument("workload", type=Path, help="workload YAML/JSON")
    p.add_argument("--cluster", type=Path, required=True, help="cluster YAML/JSON")
    p.add_argument("--out", type=Path, required=True, help="plan directory to write")
    p.add_argument("--previous", type=Path, default=None,
                   help="plan directory now running: keep adapters in place, write the diff")
    p.add_argument("--calibration", type=Path, default=None,
                   help="calibration file (default: <base_model>__<gpu>.calibration.json in "
                        "--calibration-dir or the shipped ones)")
    p.add_argument("--calibration-dir", type=Path, action="append", default=[])
    p.add_argument("--surrogate", type=Path, default=None,
                   help="default: the calibration's <base_model>__<gpu>.surrogate.json")
    p.add_argument("--verify-duration", type=float, default=1800.0,
                   help="simulated s per GPU in the twin check")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_plan)

    p = sub.add_parser("simulate", help="replay a plan directory in the twin")
    p.add_argument("plan", type=Path)
    p.add_argument("--calibration", type=Path, default=None)
    p.add_argument("--calibration-dir", type=Path, action="append", default=[])
    p.add_argument("--duration", type=float, default=None, help="default: the plan's check")
    p.add_argument("--seed", type=int, default=None, help="default: the plan's check")
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
    from lego_embed.fleet.calibration import calibrate, calibration_file_name, load_calibration
    from lego_embed.fleet.validation import fit_corrections, load_runs

    calibration = calibrate(args.components, gpu=args.gpu, base_model=args.base_model,
                            hf_model_id=args.hf_model_id, vllm_version=args.vllm_version,
                            model_max_len=args.model_max_len)
    if args.corrections_from is not None:
        calibration = calibration.with_corrections(
            load_calibration(args.corrections_from).corrections)
    if args.runs is not None:
        calibration = fit_corrections(load_runs(args.runs), calibration, log=print,
                                      workers=args.workers)
    out = args.out
    if out.is_dir() or not out.suffix:
        out = out / calibration_file_name(calibration.model, calibration.gpu)
    out.parent.mkdir(parents=True, exist_ok=True)
    calibration.save(out)
    print(f"wrote {out}: {calibration.model} on {calibration.gpu}, vLLM "
          f"{calibration.vllm_version}, {calibration.corrections}")
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
                              cache_path=args.cache, workers=args.workers)
        print(f"{path.name}: throughput MAPE {report.throughput_mape:.4f} over {report.n_ok} ok "
              f"runs, starvation agreement {report.starvation_agreement:.3f}, infeasible "
              f"detected {report.infeasible_detected}/{report.infeasible_total}, false memory "
              f"errors {report.false_memory_errors}")
        for label, table in (("all ok runs", report.latency_mape),
                             (f"{report.n_unstarved} unstarved runs",
                              report.latency_mape_unstarved)):
            print(f"  latency MAPE, {label}: "
                  + ", ".join(f"{k.removesuffix('_ms')} {v:.3f}" for k, v in table.items()))
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


def _resolve_calibration(explicit: Path | None, directories: list[Path], base_model: str,
                         gpu: str) -> Path:
    from lego_embed.fleet.calibration import find_calibration

    if explicit is not None:
        return explicit
    return find_calibration(base_model, gpu, [*directories, ASSETS])


def _load_surrogate(explicit: Path | None, calibration_path: Path) -> Surrogate:
    from lego_embed.errors import CalibrationError
    from lego_embed.fleet.surrogate import Surrogate

    path = explicit or calibration_path.with_name(
        calibration_path.name.replace(".calibration.json", ".surrogate.json"))
    if not path.is_file():
        raise CalibrationError(f"no surrogate at {path}: make one with `lego-embed fleet "
                               f"dataset --calibration {calibration_path} --out DATA.jsonl` and "
                               f"`lego-embed fleet train DATA.jsonl --out {path}`")
    return Surrogate.load(path)


def _plan(args: argparse.Namespace) -> int:
    from lego_embed.fleet.calibration import load_calibration
    from lego_embed.fleet.planner import PlanInfeasibleError, plan_fleet
    from lego_embed.fleet.replan import replan_fleet
    from lego_embed.fleet.spec import load_cluster, load_workload
    from lego_embed.fleet.vllm_output import read_plan, write_plan

    workload = load_workload(args.workload)
    cluster = load_cluster(args.cluster)
    calibration_path = _resolve_calibration(args.calibration, args.calibration_dir,
                                            workload.base_model, cluster.gpu)
    calibration = load_calibration(calibration_path)
    surrogate = _load_surrogate(args.surrogate, calibration_path)
    diff = None
    try:
        if args.previous is not None:
            previous, _, _, _ = read_plan(args.previous)
            fleet, diff = replan_fleet(workload, cluster, calibration, surrogate, previous,
                                       args.verify_duration, args.seed)
        else:
            fleet = plan_fleet(workload, cluster, calibration, surrogate, args.verify_duration,
                               args.seed)
    except PlanInfeasibleError as error:
        print(f"lego-embed: plan infeasible: {error}", file=sys.stderr)
        return EXIT_INFEASIBLE
    files = write_plan(fleet, args.out, diff)
    replicated = sum(1 for k in fleet.replicas.values() if k > 1)
    print(f"{workload.name}: {len(workload.adapters)} adapters ({replicated} replicated) on "
          f"{fleet.plan.n_gpus} of {cluster.total_gpus} {cluster.gpu} GPUs, vLLM "
          f"{fleet.rules.version}; targets {workload.targets.to_dict() or 'none'}")
    if diff is not None:
        print(f"re-plan: {len(diff.moved)} of {diff.kept_adapters} adapters moved "
              f"({diff.moved_fraction:.1%}), {len(diff.added)} added, {len(diff.removed)} "
              f"removed, instances started {diff.started or 'none'}, stopped "
              f"{diff.stopped or 'none'}, restarted {diff.restarted or 'none'}")
    for f in files:
        print(f"wrote {f}")
    if not fleet.feasible:
        print("lego-embed: plan infeasible (no deployment files written):", file=sys.stderr)
        for failure in fleet.failures:
            print(f"  - {failure}", file=sys.stderr)
        return EXIT_INFEASIBLE
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from lego_embed.fleet.calibration import load_calibration
    from lego_embed.fleet.replay import replay_plan
    from lego_embed.fleet.vllm_output import read_plan

    _, workload, cluster, _ = read_plan(args.plan)
    path = _resolve_calibration(args.calibration, args.calibration_dir, workload.base_model,
                                cluster.gpu)
    _, report = replay_plan(args.plan, load_calibration(path), args.duration, args.seed)
    for line in report:
        print(line)
    return 0


def _workload(args: argparse.Namespace) -> int:
    from lego_embed.errors import WorkloadSpecError
    from lego_embed.fleet.spec import (
        LatencyTargets,
        SyntheticWorkloadConfig,
        save_workload,
        synthetic_workload,
    )

    try:
        weights = {int(r): float(w) for r, w in (x.split(":") for x in args.ranks.split(","))}
    except ValueError as error:
        raise WorkloadSpecError(f"--ranks: expected rank:weight,... e.g. 8:0.5,16:0.5 "
                                f"({error})") from error
    targets = LatencyTargets(
        ttft_ms={99: args.ttft_p99_ms} if args.ttft_p99_ms else {},
        itl_ms={99: args.itl_p99_ms} if args.itl_p99_ms else {})
    spec = synthetic_workload(args.name, SyntheticWorkloadConfig(
        n_adapters=args.adapters, total_rate_req_s=args.total_rate, zipf_s=args.zipf,
        rank_weights=weights, seed=args.seed, max_model_len=args.max_model_len),
        base_model=args.base_model, targets=targets)
    save_workload(spec, args.out)
    print(f"wrote {args.out}: {len(spec.adapters)} adapters, {spec.total_rate_req_s:.1f} req/s")
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
