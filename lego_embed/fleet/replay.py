"""Replaying a written plan in the twin: per-GPU throughput, TTFT/ITL and starvation, as text,
simulation.json and simulation.png in the plan directory."""

from __future__ import annotations

import json
from pathlib import Path

from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.placement import Plan
from lego_embed.fleet.spec import WorkloadSpec
from lego_embed.fleet.twin import simulate


def replay_plan(plan: Plan, workload: WorkloadSpec, calibration: Calibration, duration_s: float,
                seed: int, plan_dir: str | Path) -> list[str]:
    """Simulates every GPU of the plan; returns report lines and writes the JSON and plot."""
    rows = []
    for i, gpu in enumerate(plan.gpus):
        r = simulate(gpu.adapters, gpu.instance(workload.gpu.memory_gib), calibration,
                     duration_s=duration_s, seed=seed + i)
        worst = min(r.per_adapter_completion.values()) if r.per_adapter_completion else 0.0
        rows.append({"gpu": i, "adapters": len(gpu.adapters), "max_loras": gpu.max_loras,
                     "offered_tok_s": round(gpu.offered_tok_s, 1),
                     "throughput_tok_s": round(r.total_throughput_tok_s, 1),
                     "throughput_to_ideal": round(r.throughput_to_ideal, 4),
                     "ttft_p50_ms": round(r.p50_ttft_ms, 1), "ttft_p99_ms": round(r.p99_ttft_ms, 1),
                     "mean_itl_ms": round(r.mean_itl_ms, 2), "starved": r.starved,
                     "memory_error": r.memory_error, "worst_adapter_completion": round(worst, 4),
                     "preemptions": r.preemptions, "adapter_loads": r.adapter_loads})
    out = Path(plan_dir)
    (out / "simulation.json").write_text(json.dumps(rows, indent=1) + "\n")
    _plot(rows, out / "simulation.png")
    lines = [f"{'gpu':>3} {'adapters':>8} {'max_loras':>9} {'offered':>9} {'served':>9} "
             f"{'ttft_p50':>9} {'ttft_p99':>9} {'itl_ms':>7} starved"]
    for row in rows:
        lines.append(f"{row['gpu']:>3} {row['adapters']:>8} {row['max_loras']:>9} "
                     f"{row['offered_tok_s']:>9.0f} {row['throughput_tok_s']:>9.0f} "
                     f"{row['ttft_p50_ms']:>9.1f} {row['ttft_p99_ms']:>9.1f} "
                     f"{row['mean_itl_ms']:>7.1f} {row['starved']}")
    starving = sum(r["starved"] for r in rows)
    lines.append(f"{len(rows)} GPUs, {starving} starving; wrote {out / 'simulation.json'} and "
                 f"{out / 'simulation.png'}")
    return lines


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    gpus = [r["gpu"] for r in rows]
    a.bar([g - 0.2 for g in gpus], [r["offered_tok_s"] for r in rows], 0.4, label="offered")
    a.bar([g + 0.2 for g in gpus], [r["throughput_tok_s"] for r in rows], 0.4, label="served")
    a.set_xlabel("GPU")
    a.set_ylabel("tokens/s")
    a.legend()
    b.bar([g - 0.2 for g in gpus], [r["ttft_p99_ms"] for r in rows], 0.4, label="TTFT p99")
    b.bar([g + 0.2 for g in gpus], [r["mean_itl_ms"] for r in rows], 0.4, label="mean ITL")
    b.set_xlabel("GPU")
    b.set_ylabel("ms")
    b.set_yscale("log")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
