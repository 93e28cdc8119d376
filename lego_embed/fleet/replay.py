"""Replaying a written plan in the twin: per-instance throughput, TTFT/ITL percentiles and the
criterion's verdict, as text, simulation.json and simulation.png in the plan directory. With
the plan's own duration and seeds (the default) it reproduces the plan's check exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.placement import Criterion, GpuAssignment, Plan, TwinCheck
from lego_embed.fleet.planner import FleetPlan, check_inputs
from lego_embed.fleet.vllm_output import read_plan, simulation_rows


def replay_plan(plan_dir: str | Path, calibration: Calibration, duration_s: float | None = None,
                seed: int | None = None) -> tuple[FleetPlan, list[str]]:
    """Simulates every instance of the plan; returns the replayed plan and report lines and
    writes simulation.json and simulation.png."""
    running, workload, cluster, placement = read_plan(plan_dir)
    rules = check_inputs(workload, cluster, calibration)
    by_id = {a.adapter_id: a for a in workload.adapters}
    gpus = []
    for gpu in running:
        adapters = [replace(by_id[a], rate_req_s=rate)
                    for a, rate in zip(gpu.adapters, gpu.rates_req_s, strict=True)]
        gpus.append(GpuAssignment(adapters, gpu.max_loras, name=gpu.name, node=gpu.node,
                                  fixed_max_lora_rank=gpu.max_lora_rank,
                                  fixed_max_cpu_loras=gpu.max_cpu_loras, rules=rules))
    planned = placement["twin_check"]
    check = TwinCheck(calibration,
                      duration_s=planned["duration_s"] if duration_s is None else duration_s,
                      seed=planned["seed"] if seed is None else seed,
                      max_model_len=workload.max_model_len)
    plan = Plan(strategy="replay", gpus=gpus)
    plan.twin = [check.run(g, i) for i, g in enumerate(gpus)]
    criterion = Criterion(targets=workload.targets,
                          served_margin=placement["criterion"]["served_margin"],
                          latency_margin=placement["criterion"]["latency_margin"])
    fleet = FleetPlan(workload, cluster, calibration, rules, criterion, check, plan,
                      dict(placement["replicas"]))
    rows = simulation_rows(fleet)
    out = Path(plan_dir)
    (out / "simulation.json").write_text(json.dumps(rows, indent=1) + "\n")
    _plot(rows, out / "simulation.png")
    lines = [f"{'instance':>10} {'adapters':>8} {'max_loras':>9} {'offered':>8} {'served':>8} "
             f"{'ttft_p50':>8} {'ttft_p99':>8} {'itl_p50':>7} {'itl_p99':>7} meets"]
    for row in rows:
        lines.append(f"{row['instance']:>10} {row['adapters']:>8} {row['max_loras']:>9} "
                     f"{row['offered_tok_s']:>8.0f} {row['throughput_tok_s']:>8.0f} "
                     f"{row['ttft_ms'].get('p50', 0):>8.0f} {row['ttft_ms'].get('p99', 0):>8.0f} "
                     f"{row['itl_ms'].get('p50', 0):>7.1f} {row['itl_ms'].get('p99', 0):>7.1f} "
                     f"{row['meets_criterion']}")
    missing = sum(not r["meets_criterion"] for r in rows)
    lines.append(f"{len(rows)} instances, {missing} missing the criterion "
                 f"({check.duration_s:.0f} s simulated, seed {check.seed}); wrote "
                 f"{out / 'simulation.json'} and {out / 'simulation.png'}")
    return fleet, lines


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    x = list(range(len(rows)))
    a.bar([i - 0.2 for i in x], [r["offered_tok_s"] for r in rows], 0.4, label="offered")
    a.bar([i + 0.2 for i in x], [r["throughput_tok_s"] for r in rows], 0.4, label="served")
    a.set_xlabel("instance")
    a.set_ylabel("tokens/s")
    a.legend()
    b.bar([i - 0.2 for i in x], [r["ttft_ms"].get("p99", 0) for r in rows], 0.4,
          label="TTFT p99")
    b.bar([i + 0.2 for i in x], [r["itl_ms"].get("p99", 0) for r in rows], 0.4, label="ITL p99")
    b.set_xlabel("instance")
    b.set_ylabel("ms")
    b.set_yscale("log")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
