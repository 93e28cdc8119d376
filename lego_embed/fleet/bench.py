"""The fleet benchmark: twin validation on both real-run files, the surrogate's held-out metrics,
and placement on synthetic NPC workloads against the baselines; writes fleet.json and plots."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.placement import (
    Criterion,
    Plan,
    TwinCheck,
    exact_minimum_gpus,
    first_fit_decreasing,
    fixed_plan,
    memory_only_plan,
    surrogate_feasibility,
    verify_and_repair,
)
from lego_embed.fleet.planner import PlanInfeasibleError, plan_fleet
from lego_embed.fleet.replan import RunningGpu, replan_fleet
from lego_embed.fleet.spec import (
    ClusterSpec,
    LatencyTargets,
    NodeSpec,
    StorageSpec,
    SyntheticWorkloadConfig,
    WorkloadSpec,
    synthetic_workload,
)
from lego_embed.fleet.surrogate import Surrogate
from lego_embed.fleet.twin import InstanceConfig, simulate
from lego_embed.fleet.validation import ValidationReport, load_runs, validate

FIXED_ADAPTERS_PER_GPU = 32
EXACT_LIMIT = 9
NPC_TARGETS = LatencyTargets(ttft_ms={99: 1000.0}, itl_ms={99: 100.0})

BENCH_WORKLOADS = (
    ("tiny_8", SyntheticWorkloadConfig(n_adapters=8, total_rate_req_s=40.0, zipf_s=0.5, seed=11)),
    ("npc_100", SyntheticWorkloadConfig(n_adapters=100, total_rate_req_s=40.0, zipf_s=1.0,
                                        seed=1)),
    ("npc_250", SyntheticWorkloadConfig(n_adapters=250, total_rate_req_s=60.0, zipf_s=0.8,
                                        seed=2)),
    ("npc_300", SyntheticWorkloadConfig(n_adapters=300, total_rate_req_s=30.0, zipf_s=1.0,
                                        seed=0)),
    ("npc_500", SyntheticWorkloadConfig(n_adapters=500, total_rate_req_s=80.0, zipf_s=1.2,
                                        seed=3)),
    ("npc_1000", SyntheticWorkloadConfig(n_adapters=1000, total_rate_req_s=100.0, zipf_s=1.0,
                                         seed=4)),
)


def bench_cluster(gpu: str, gpus: int = 256) -> ClusterSpec:
    """A cluster large enough for every benchmark workload (32 nodes of 8 GPUs)."""
    return ClusterSpec(name="bench", gpu=gpu, namespace="bench",
                       nodes=tuple(NodeSpec(f"node-{i}", 8) for i in range(gpus // 8)),
                       adapter_storage=StorageSpec(kind="pvc", claim_name="adapters",
                                                   mount_path="/adapters"))


@dataclass
class PlacementRow:
    """One workload's placement result in fleet.json's shape (GPU counts) under NPC_TARGETS.
    gpus_exact is the minimum under the surrogate's feasibility (tiny workloads only), to
    compare with gpus_ffd_before_twin (FFD under the same oracle); gpus_ours is after twin
    repair and consolidation; the baselines are repaired by the same twin check."""

    workload: str
    adapters: int
    gpus_ours: int
    gpus_memory_only: int
    gpus_fixed: int
    gpus_exact: int | None
    gpus_ffd_before_twin: int
    replicated_adapters: int
    gpus_missing_targets: int
    worst_ttft_p99_ms: float
    worst_itl_p99_ms: float
    plan_seconds: float


def placement_row(name: str, workload: WorkloadSpec, calibration: Calibration,
                  surrogate: Surrogate, verify_duration_s: float) -> PlacementRow:
    start = time.perf_counter()
    fleet = plan_fleet(workload, bench_cluster(calibration.gpu), calibration, surrogate,
                       verify_duration_s)
    seconds = time.perf_counter() - start
    criterion = Criterion(targets=workload.targets)
    check = TwinCheck(calibration, duration_s=verify_duration_s,
                      max_model_len=workload.max_model_len)
    memory_only = verify_and_repair(memory_only_plan(workload, calibration), check, criterion)
    fixed = verify_and_repair(fixed_plan(workload, FIXED_ADAPTERS_PER_GPU), check, criterion)
    feasible = surrogate_feasibility(surrogate, calibration, criterion)
    ffd = first_fit_decreasing(workload.adapters, feasible)
    exact = None
    if len(workload.adapters) <= EXACT_LIMIT:
        exact = exact_minimum_gpus(workload.adapters, feasible, EXACT_LIMIT)
    return PlacementRow(
        workload=name, adapters=len(workload.adapters), gpus_ours=fleet.plan.n_gpus,
        gpus_memory_only=_passing_count(memory_only, criterion),
        gpus_fixed=_passing_count(fixed, criterion), gpus_exact=exact,
        gpus_ffd_before_twin=ffd.n_gpus,
        replicated_adapters=sum(1 for k in fleet.replicas.values() if k > 1),
        gpus_missing_targets=sum(not criterion.passes(r) for r in fleet.plan.twin),
        worst_ttft_p99_ms=round(max(r.latency_ms("ttft", 99) for r in fleet.plan.twin), 1),
        worst_itl_p99_ms=round(max(r.latency_ms("itl", 99) for r in fleet.plan.twin), 2),
        plan_seconds=round(seconds, 2))


def _passing_count(plan: Plan, criterion: Criterion) -> int:
    """GPUs of a repaired baseline; a baseline that still misses counts as -1 (no plan)."""
    return plan.n_gpus if all(criterion.passes(r) for r in plan.twin) else -1


def replan_stability(workload: WorkloadSpec, calibration: Calibration, surrogate: Surrogate,
                     verify_duration_s: float, change: float = 0.10,
                     seeds: tuple[int, ...] = (1, 2, 3)) -> dict[str, Any]:
    """Plans the workload, then re-plans it after every adapter's rate changes by a factor
    drawn uniformly in [1 - change, 1 + change] (one draw per seed), and once after every rate
    grows by `change` (seed None): moved adapters and GPUs."""
    cluster = bench_cluster(calibration.gpu)
    first = plan_fleet(workload, cluster, calibration, surrogate, verify_duration_s)
    running = [RunningGpu(g.name, g.node, g.max_loras, g.max_lora_rank, g.max_cpu_loras,
                          tuple(a.adapter_id for a in g.adapters),
                          tuple(a.rate_req_s for a in g.adapters)) for g in first.plan.gpus]
    rows = []
    for seed in (*seeds, None):
        if seed is None:
            factors = np.full(len(workload.adapters), 1.0 + change)
        else:
            factors = np.random.default_rng(seed).uniform(1.0 - change, 1.0 + change,
                                                          len(workload.adapters))
        changed = replace(workload, adapters=tuple(
            replace(a, rate_req_s=a.rate_req_s * f)
            for a, f in zip(workload.adapters, factors, strict=True)))
        fleet, diff = replan_fleet(changed, cluster, calibration, surrogate, running,
                                   verify_duration_s)
        rows.append({"seed": seed, "moved_adapters": len(diff.moved),
                     "moved_fraction": round(diff.moved_fraction, 4),
                     "gpus_before": first.plan.n_gpus, "gpus_after": fleet.plan.n_gpus,
                     "instances_started": len(diff.started),
                     "instances_stopped": len(diff.stopped),
                     "instances_restarted": len(diff.restarted), "feasible": fleet.feasible})
    return {"workload": workload.name, "adapters": len(workload.adapters),
            "rate_change": change, "runs": rows}


def sim_seconds_per_served_hour(calibration: Calibration) -> float:
    """Wall-clock seconds to simulate one hour of a heavily loaded instance (the slowest case:
    ~1M arrivals, client-saturated) and of a moderately loaded one; the larger is reported."""
    from lego_embed.fleet.spec import AdapterSpec

    cases = [
        ([AdapterSpec(f"h{i}", (8, 16)[i % 2], (1.6, 0.8, 0.4)[i % 3]) for i in range(384)],
         InstanceConfig(max_loras=16, max_cpu_loras=384, max_lora_rank=16)),
        ([AdapterSpec(f"m{i}", (8, 16, 32)[i % 3], 0.1) for i in range(192)],
         InstanceConfig(max_loras=64, max_cpu_loras=192, max_lora_rank=32)),
    ]
    worst = 0.0
    for adapters, config in cases:
        start = time.perf_counter()
        simulate(adapters, config, calibration, duration_s=3600.0, seed=0)
        worst = max(worst, time.perf_counter() - start)
    return worst


def validation_block(calibration: Calibration, shared_dir: Path,
                     progress: Callable[[str], None] | None = None,
                     cache_path: Path | None = None
                     ) -> tuple[dict[str, Any], ValidationReport, ValidationReport]:
    base = shared_dir / "adapter_serving"
    main = validate(load_runs(base / "calibration_runs.csv"), calibration,
                    cache_path=cache_path)
    if progress is not None:
        progress(f"calibration_runs.csv: MAPE {main.throughput_mape:.4f}")
    extra = validate(load_runs(base / "calibration_runs_extra_workloads.csv"), calibration,
                     cache_path=cache_path)
    if progress is not None:
        progress(f"extra workloads: MAPE {extra.throughput_mape:.4f}")
    n_agree = main.starvation_agreement * main.n_ok + extra.starvation_agreement * extra.n_ok

    def rounded(table: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 4) for k, v in table.items()}

    block = {
        "calibration_mape": round(main.throughput_mape, 4),
        "validation_mape": round(extra.throughput_mape, 4),
        "starvation_agreement": round(n_agree / (main.n_ok + extra.n_ok), 4),
        "starvation_agreement_calibration": round(main.starvation_agreement, 4),
        "starvation_agreement_validation": round(extra.starvation_agreement, 4),
        "infeasible_detected": f"{extra.infeasible_detected}/{extra.infeasible_total}",
        "false_memory_errors": main.false_memory_errors + extra.false_memory_errors,
        "itl_mape_calibration": round(main.itl_mape, 4),
        "itl_mape_validation": round(extra.itl_mape, 4),
        "latency_mape_calibration": rounded(main.latency_mape),
        "latency_mape_validation": rounded(extra.latency_mape),
        "unstarved_runs": {"calibration": main.n_unstarved, "validation": extra.n_unstarved},
        "latency_mape_unstarved_calibration": rounded(main.latency_mape_unstarved),
        "latency_mape_unstarved_validation": rounded(extra.latency_mape_unstarved),
        "latency_median_ape_calibration": rounded(main.latency_mdape),
        "latency_median_ape_validation": rounded(extra.latency_mdape),
        "latency_median_ape_unstarved_calibration": rounded(main.latency_mdape_unstarved),
        "latency_median_ape_unstarved_validation": rounded(extra.latency_mdape_unstarved),
    }
    return block, main, extra


def plot_validation(main: ValidationReport, extra: ValidationReport, path: Path) -> None:
    """Twin vs real per run: total throughput, and mean ITL of the runs that did not starve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.5, 5))
    for report, label, marker in ((main, "calibration_runs.csv", "o"),
                                  (extra, "extra workloads (never fitted)", "x")):
        rows = [r for r in report.rows if r["real_tok_s"] is not None]
        ax.scatter([r["real_tok_s"] for r in rows], [r["twin_tok_s"] for r in rows], s=12,
                   marker=marker, label=label, alpha=0.7)
        calm = [r for r in rows if r["real_starved"] is False
                and r["twin_latency_ms"].get("mean_itl_ms")]
        bx.scatter([r["real_latency_ms"]["mean_itl_ms"] for r in calm],
                   [r["twin_latency_ms"]["mean_itl_ms"] for r in calm], s=12, marker=marker,
                   label=label, alpha=0.7)
    top = max(r["real_tok_s"] or 0 for r in main.rows + extra.rows) * 1.1
    ax.plot([0, top], [0, top], "k--", linewidth=1)
    ax.set_xlabel("real vLLM throughput (tokens/s)")
    ax.set_ylabel("twin throughput (tokens/s)")
    ax.set_title(f"Throughput: MAPE {main.throughput_mape:.3f} / {extra.throughput_mape:.3f}")
    ax.legend()
    bx.plot([10, 400], [10, 400], "k--", linewidth=1)
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("real mean ITL (ms), runs that did not starve")
    bx.set_ylabel("twin mean ITL (ms)")
    bx.set_title("Mean ITL: MAPE "
                 f"{main.latency_mape_unstarved.get('mean_itl_ms', float('nan')):.3f} / "
                 f"{extra.latency_mape_unstarved.get('mean_itl_ms', float('nan')):.3f}")
    bx.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_placement(rows: list[PlacementRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.arange(len(rows))
    width = 0.27
    for offset, key, label in ((-width, "gpus_ours", "ours (surrogate FFD + twin repair)"),
                               (0.0, "gpus_memory_only", "memory only + repair"),
                               (width, "gpus_fixed", f"{FIXED_ADAPTERS_PER_GPU}/GPU + repair")):
        ax.bar(x + offset, [getattr(r, key) for r in rows], width, label=label)
    ax.set_xticks(x, [f"{r.workload}\n({r.adapters})" for r in rows])
    ax.set_ylabel("GPUs meeting the targets (-1: none found)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_benchmark(calibration: Calibration, surrogate: Surrogate, shared_dir: Path,
                  out_json: Path, verify_duration_s: float = 1800.0,
                  progress: Callable[[str], None] | None = None,
                  cache_path: Path | None = None) -> dict[str, Any]:
    """Runs everything and writes out_json plus fleet_validation.png / fleet_placement.png.
    `cache_path` reuses per-run validation results of an earlier `fleet validate --cache`."""
    say = progress or (lambda _message: None)
    twin_block, main, extra = validation_block(calibration, shared_dir, say, cache_path)
    twin_block["sim_seconds_per_served_hour"] = round(sim_seconds_per_served_hour(calibration), 3)
    say(f"twin: {twin_block}")
    rows = []
    workloads = {}
    for name, config in BENCH_WORKLOADS:
        workload = synthetic_workload(name, config, base_model=calibration.model,
                                      targets=NPC_TARGETS)
        workloads[name] = workload
        row = placement_row(name, workload, calibration, surrogate, verify_duration_s)
        say(f"placement {row}")
        rows.append(row)
    scaled = []
    for factor in (2.0, 3.0, 1000.0):
        base = workloads["npc_300"]
        workload = replace(base, name=f"npc_300_x{factor:g}", adapters=tuple(
            replace(a, rate_req_s=a.rate_req_s * factor) for a in base.adapters))
        try:
            fleet = plan_fleet(workload, bench_cluster(calibration.gpu), calibration, surrogate,
                               verify_duration_s)
            scaled.append({"workload": workload.name, "gpus": fleet.plan.n_gpus,
                           "feasible": fleet.feasible,
                           "replicated_adapters": sum(k > 1 for k in fleet.replicas.values())})
        except PlanInfeasibleError as error:
            scaled.append({"workload": workload.name, "gpus": None, "feasible": False,
                           "refused": str(error)})
        say(f"scaled {scaled[-1]}")
    stability = replan_stability(workloads["npc_300"], calibration, surrogate,
                                 verify_duration_s)
    say(f"re-plan {stability}")
    result = {
        "twin": twin_block,
        "surrogate": {k: round(float(v), 4) for k, v in surrogate.metrics.items()
                      if k.endswith(("smape", "_f1", "inference_ms"))},
        "latency_targets": NPC_TARGETS.to_dict(),
        "placement": [row.__dict__ for row in rows],
        "scaled_rates": scaled,
        "replan_stability": stability,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    plot_validation(main, extra, out_json.parent / "fleet_validation.png")
    plot_placement(rows, out_json.parent / "fleet_placement.png")
    return result
