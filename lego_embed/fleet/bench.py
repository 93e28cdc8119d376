"""The fleet benchmark: twin validation on both real-run files, the surrogate's held-out metrics,
and placement on synthetic NPC workloads against the baselines; writes fleet.json and plots."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.placement import (
    Plan,
    consolidate,
    exact_minimum_gpus,
    first_fit_decreasing,
    fixed_plan,
    memory_only_plan,
    surrogate_feasibility,
    verify_and_repair,
)
from lego_embed.fleet.spec import SyntheticWorkloadConfig, WorkloadSpec, synthetic_workload
from lego_embed.fleet.surrogate import Surrogate
from lego_embed.fleet.twin import InstanceConfig, simulate
from lego_embed.fleet.validation import ValidationReport, load_runs, validate

FIXED_ADAPTERS_PER_GPU = 32
EXACT_LIMIT = 9

BENCH_WORKLOADS = (
    ("tiny_8", SyntheticWorkloadConfig(n_adapters=8, total_rate_req_s=40.0, zipf_s=0.5, seed=11)),
    ("npc_100", SyntheticWorkloadConfig(n_adapters=100, total_rate_req_s=40.0, zipf_s=1.0,
                                        seed=1)),
    ("npc_250", SyntheticWorkloadConfig(n_adapters=250, total_rate_req_s=60.0, zipf_s=0.8,
                                        seed=2)),
    ("npc_500", SyntheticWorkloadConfig(n_adapters=500, total_rate_req_s=80.0, zipf_s=1.2,
                                        seed=3)),
    ("npc_1000", SyntheticWorkloadConfig(n_adapters=1000, total_rate_req_s=100.0, zipf_s=1.0,
                                         seed=4)),
)


@dataclass
class PlacementRow:
    """One workload's placement result in fleet.json's shape (GPU counts). gpus_exact is the
    minimum under the surrogate's feasibility (tiny workloads only), to compare with
    gpus_ffd_before_twin (FFD under the same oracle); gpus_ours is after twin repair and
    twin-verified consolidation."""

    workload: str
    adapters: int
    gpus_ours: int
    gpus_memory_only: int
    gpus_fixed: int
    gpus_exact: int | None
    gpus_ffd_before_twin: int
    starving_gpus_in_twin: int
    repairs_ours: int
    plan_seconds: float


def plan_workload(workload: WorkloadSpec, calibration: Calibration, surrogate: Surrogate,
                  verify_duration_s: float = 1800.0) -> Plan:
    """Our planner: surrogate-driven FFD, then twin verification and repair."""
    feasible = surrogate_feasibility(surrogate, calibration)
    plan = first_fit_decreasing(workload.adapters, feasible, strategy="ffd_surrogate")
    plan = verify_and_repair(plan, calibration, duration_s=verify_duration_s,
                             gpu_memory_gib=workload.gpu.memory_gib, feasible=feasible)
    return consolidate(plan, calibration, duration_s=verify_duration_s,
                       gpu_memory_gib=workload.gpu.memory_gib, feasible=feasible)


def placement_row(name: str, workload: WorkloadSpec, calibration: Calibration,
                  surrogate: Surrogate, verify_duration_s: float) -> tuple[PlacementRow, dict]:
    start = time.perf_counter()
    ours = plan_workload(workload, calibration, surrogate, verify_duration_s)
    seconds = time.perf_counter() - start
    gpu_gib = workload.gpu.memory_gib
    memory_only = verify_and_repair(memory_only_plan(workload, calibration), calibration,
                                    duration_s=verify_duration_s, gpu_memory_gib=gpu_gib)
    fixed = verify_and_repair(fixed_plan(workload, FIXED_ADAPTERS_PER_GPU), calibration,
                              duration_s=verify_duration_s, gpu_memory_gib=gpu_gib)
    exact = None
    if len(workload.adapters) <= EXACT_LIMIT:
        exact = exact_minimum_gpus(workload.adapters,
                                   surrogate_feasibility(surrogate, calibration), EXACT_LIMIT)
    row = PlacementRow(workload=name, adapters=len(workload.adapters), gpus_ours=ours.n_gpus,
                       gpus_memory_only=memory_only.n_gpus, gpus_fixed=fixed.n_gpus,
                       gpus_exact=exact, gpus_ffd_before_twin=ours.initial_gpus,
                       starving_gpus_in_twin=ours.starving_gpus,
                       repairs_ours=ours.repairs, plan_seconds=round(seconds, 2))
    detail = {"ours": ours, "memory_only": memory_only, "fixed": fixed}
    return row, detail


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
    }
    return block, main, extra


def plot_validation(main: ValidationReport, extra: ValidationReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for report, label, marker in ((main, "calibration_runs.csv", "o"),
                                  (extra, "extra workloads (never fitted)", "x")):
        rows = [r for r in report.rows if r["real_tok_s"] is not None]
        ax.scatter([r["real_tok_s"] for r in rows], [r["twin_tok_s"] for r in rows], s=12,
                   marker=marker, label=label, alpha=0.7)
    top = max(r["real_tok_s"] or 0 for r in main.rows + extra.rows) * 1.1
    ax.plot([0, top], [0, top], "k--", linewidth=1)
    ax.set_xlabel("real vLLM throughput (tokens/s)")
    ax.set_ylabel("twin throughput (tokens/s)")
    ax.set_title(f"Twin vs real: MAPE {main.throughput_mape:.3f} / {extra.throughput_mape:.3f}")
    ax.legend()
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
    ax.set_ylabel("GPUs without starvation")
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
    for name, config in BENCH_WORKLOADS:
        row, _ = placement_row(name, synthetic_workload(name, config), calibration, surrogate,
                               verify_duration_s)
        say(f"placement {row}")
        rows.append(row)
    result = {
        "twin": twin_block,
        "surrogate": {k: round(float(surrogate.metrics[k]), 4)
                      for k in ("throughput_smape", "starvation_f1", "inference_ms")},
        "placement": [row.__dict__ for row in rows],
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    plot_validation(main, extra, out_json.parent / "fleet_validation.png")
    plot_placement(rows, out_json.parent / "fleet_placement.png")
    return result
