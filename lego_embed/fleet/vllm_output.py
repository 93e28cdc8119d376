"""Operator output of a plan: placement.json, one `vllm serve` command per GPU, a routing table
adapter -> instance, and reading a plan back for `lego-embed fleet simulate`."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from lego_embed.errors import WorkloadSpecError
from lego_embed.fleet.placement import GpuAssignment, Plan
from lego_embed.fleet.spec import WorkloadSpec, workload_from_dict

BASE_PORT = 8000


def serve_command(gpu: GpuAssignment, index: int, model_id: str, adapter_dir: str) -> str:
    """The vLLM launch line of one instance (GPU `index`, port BASE_PORT + index)."""
    modules = " ".join(shlex.quote(f"{a.adapter_id}={adapter_dir}/{a.adapter_id}")
                       for a in gpu.adapters)
    return (f"CUDA_VISIBLE_DEVICES={index} vllm serve {shlex.quote(model_id)} "
            f"--port {BASE_PORT + index} --enable-lora "
            f"--max-loras {gpu.max_loras} --max-cpu-loras {gpu.max_cpu_loras} "
            f"--max-lora-rank {gpu.max_lora_rank} --max-num-seqs 2048 "
            f"--lora-modules {modules}")


def write_plan(plan: Plan, workload: WorkloadSpec, out_dir: str | Path,
               model_id: str = "Qwen/Qwen2.5-7B-Instruct", adapter_dir: str = "adapters",
               host: str = "localhost") -> list[Path]:
    """Writes placement.json, serve_commands.sh, routing.json and workload.yaml into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    placement: dict[str, Any] = {
        "workload": workload.name, "strategy": plan.strategy, "n_gpus": plan.n_gpus,
        "model_id": model_id, "gpus": [
            {"gpu": i, "port": BASE_PORT + i, "max_loras": g.max_loras,
             "max_cpu_loras": g.max_cpu_loras, "max_lora_rank": g.max_lora_rank,
             "offered_tok_s": round(g.offered_tok_s, 2),
             "adapters": [a.adapter_id for a in g.adapters],
             "twin": ({"total_throughput_tok_s": round(plan.twin[i].total_throughput_tok_s, 2),
                       "throughput_to_ideal": round(plan.twin[i].throughput_to_ideal, 4),
                       "starved": plan.twin[i].starved} if i < len(plan.twin) else None)}
            for i, g in enumerate(plan.gpus)],
    }
    files = [out / "placement.json", out / "serve_commands.sh", out / "routing.json",
             out / "workload.json"]
    files[0].write_text(json.dumps(placement, indent=1) + "\n")
    lines = ["#!/bin/sh", "# One vLLM instance per GPU; start each on its own GPU/host.",
             *(serve_command(g, i, model_id, adapter_dir) + " &" for i, g in enumerate(plan.gpus)),
             "wait"]
    files[1].write_text("\n".join(lines) + "\n")
    files[1].chmod(0o755)
    routing = {a.adapter_id: {"gpu": i, "url": f"http://{host}:{BASE_PORT + i}/v1",
                              "model": a.adapter_id}
               for i, g in enumerate(plan.gpus) for a in g.adapters}
    files[2].write_text(json.dumps(routing, indent=1) + "\n")
    files[3].write_text(json.dumps(workload.to_dict(), indent=1) + "\n")
    return files


def read_plan(plan_dir: str | Path) -> tuple[Plan, WorkloadSpec]:
    """Reads a plan directory written by write_plan (placement.json + workload.json)."""
    root = Path(plan_dir)
    try:
        placement = json.loads((root / "placement.json").read_text())
        workload = workload_from_dict(json.loads((root / "workload.json").read_text()))
    except FileNotFoundError as error:
        raise WorkloadSpecError(f"{root} is not a plan directory (missing {error.filename}); "
                                "write one with `lego-embed fleet plan`") from error
    except json.JSONDecodeError as error:
        raise WorkloadSpecError(f"{root}: a plan file is not valid JSON: {error}") from error
    by_id = {a.adapter_id: a for a in workload.adapters}
    gpus = []
    for entry in placement.get("gpus", []):
        missing = [x for x in entry["adapters"] if x not in by_id]
        if missing:
            raise WorkloadSpecError(f"{root}/placement.json: gpu {entry['gpu']} names adapters "
                                    f"not in workload.json: {missing[:5]}")
        gpus.append(GpuAssignment([by_id[x] for x in entry["adapters"]], int(entry["max_loras"])))
    return Plan(strategy=placement.get("strategy", "unknown"), gpus=gpus), workload
