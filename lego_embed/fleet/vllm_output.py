"""The plan directory: what `lego-embed fleet plan` writes and what `simulate` and
`plan --previous` read back.

    placement.json   instances (name, node, vLLM flags, adapters with traffic shares), the twin
                     check of each (verdict, throughput, TTFT/ITL percentiles), the criterion,
                     `feasible` and `failures`
    simulation.json  per-instance rows of the same twin check (`fleet simulate` rewrites it with
                     the same duration and seeds, so the two agree)
    routing.json     adapter -> replicas [{instance, url, share}]
    workload.json, cluster.json   the inputs, as validated
    deploy/          Kubernetes manifests (vllm.yaml, router.yaml) and router-config.yaml
    diff.json, lora_calls.json, apply_replan.sh   (re-plans only) what changes and how
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from lego_embed.errors import WorkloadSpecError
from lego_embed.fleet.deploy import (
    instance_manifests,
    router_config,
    router_manifests,
    routes,
    service_url,
)
from lego_embed.fleet.placement import GpuAssignment
from lego_embed.fleet.planner import FleetPlan
from lego_embed.fleet.replan import PlanDiff, RunningGpu, runtime_lora_calls
from lego_embed.fleet.spec import ClusterSpec, WorkloadSpec, cluster_from_dict, workload_from_dict
from lego_embed.fleet.twin import TwinResult


def twin_row(gpu: GpuAssignment, result: TwinResult, fleet: FleetPlan) -> dict[str, Any]:
    """The twin check of one instance as written to placement.json and simulation.json."""
    return {
        "instance": gpu.name, "adapters": len(gpu.adapters), "max_loras": gpu.max_loras,
        "offered_tok_s": round(gpu.offered_tok_s, 1),
        "throughput_tok_s": round(result.total_throughput_tok_s, 1),
        "throughput_to_ideal": round(result.throughput_to_ideal, 4),
        "ttft_ms": {f"p{q}": round(v, 1) for q, v in result.ttft_percentiles_ms.items()},
        "itl_ms": {f"p{q}": round(v, 2) for q, v in result.itl_percentiles_ms.items()},
        "starved": result.starved, "memory_error": result.memory_error,
        "meets_criterion": fleet.criterion.passes(result),
        "failures": fleet.criterion.failures(result),
    }


def placement_dict(fleet: FleetPlan) -> dict[str, Any]:
    shares = routes(fleet)
    instances = []
    for gpu, result in zip(fleet.plan.gpus, fleet.plan.twin, strict=True):
        instances.append({
            "name": gpu.name, "node": gpu.node, "max_loras": gpu.max_loras,
            "max_cpu_loras": gpu.max_cpu_loras, "max_lora_rank": gpu.max_lora_rank,
            "offered_tok_s": round(gpu.offered_tok_s, 2),
            "adapters": [{"id": a.adapter_id, "rate_req_s": a.rate_req_s,
                          "share": dict(shares[a.adapter_id])[gpu.name]}
                         for a in gpu.adapters],
            "twin": twin_row(gpu, result, fleet)})
    return {
        "workload": fleet.workload.name, "cluster": fleet.cluster.name,
        "base_model": fleet.calibration.model, "model_id": fleet.calibration.hf_model_id,
        "gpu": fleet.calibration.gpu, "vllm_version": fleet.rules.version,
        "image": fleet.rules.image, "max_model_len": fleet.workload.max_model_len,
        "latency_targets": fleet.workload.targets.to_dict(),
        "criterion": {"served_margin": fleet.criterion.served_margin,
                      "latency_margin": fleet.criterion.latency_margin},
        "twin_check": {"duration_s": fleet.check.duration_s, "seed": fleet.check.seed},
        "feasible": fleet.feasible, "failures": fleet.failures,
        "n_instances": fleet.plan.n_gpus, "replicas": dict(sorted(fleet.replicas.items())),
        "instances": instances,
    }


def _yaml_documents(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


def write_plan(fleet: FleetPlan, out_dir: str | Path, diff: PlanDiff | None = None) -> list[Path]:
    """Writes the plan directory (deployment files only for a feasible plan); returns the
    files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    namespace = fleet.cluster.namespace
    written = {
        "placement.json": json.dumps(placement_dict(fleet), indent=1),
        "simulation.json": json.dumps(simulation_rows(fleet), indent=1),
        "routing.json": json.dumps({
            adapter_id: [{"instance": i, "url": service_url(i, namespace) + "/v1",
                          "share": round(share, 6)} for i, share in replicas]
            for adapter_id, replicas in sorted(routes(fleet).items())}, indent=1),
        "workload.json": json.dumps(fleet.workload.to_dict(), indent=1),
        "cluster.json": json.dumps(cluster_to_dict(fleet.cluster), indent=1),
    }
    if fleet.feasible:
        config = yaml.safe_dump(router_config(fleet), sort_keys=False)
        written["deploy/router-config.yaml"] = config
        written["deploy/vllm.yaml"] = _yaml_documents(
            [m for gpu in fleet.plan.gpus for m in instance_manifests(gpu, fleet)])
        written["deploy/router.yaml"] = _yaml_documents(router_manifests(fleet, config))
    if diff is not None:
        calls = runtime_lora_calls(diff, fleet, lambda i: service_url(i, namespace))
        written["diff.json"] = json.dumps(diff.to_dict(), indent=1)
        written["lora_calls.json"] = json.dumps(calls, indent=1)
        if fleet.feasible:
            written["apply_replan.sh"] = apply_script(calls, diff)
    paths = []
    for name, text in written.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if text.endswith("\n") else text + "\n")
        paths.append(path)
    return paths


def simulation_rows(fleet: FleetPlan) -> list[dict[str, Any]]:
    return [twin_row(g, r, fleet) for g, r in zip(fleet.plan.gpus, fleet.plan.twin, strict=True)]


def apply_script(calls: list[dict[str, Any]], diff: PlanDiff) -> str:
    """A shell script applying a re-plan to the running cluster: start new instances, load
    adapters where they join, roll the router to the new routes, unload where they left, then
    stop instances no longer planned. Run it from a pod or host that reaches the Services."""
    lines = ["#!/bin/sh", "# Applies the re-plan without restarting running vLLM instances.",
             "set -eu", 'cd "$(dirname "$0")"',
             "kubectl apply -f deploy/vllm.yaml   # new instances start; running ones unchanged"]
    for name in diff.started:
        lines.append(f"kubectl rollout status deployment/{name} --timeout=30m")
    for call in calls:
        if call["phase"] == "load":
            lines.append(_curl(call))
    lines += ["kubectl apply -f deploy/router.yaml  # rolls the router to the new routes",
              "kubectl rollout status deployment/npc-router --timeout=10m"]
    for call in calls:
        if call["phase"] == "unload":
            lines.append(_curl(call))
    for name in diff.stopped:
        lines += [f"kubectl delete deployment/{name} service/{name} configmap/{name}-adapters"]
    return "\n".join(lines) + "\n"


def _curl(call: dict[str, Any]) -> str:
    return ("curl -fsS -X POST -H 'Content-Type: application/json' "
            f"-d {shlex.quote(json.dumps(call['body']))} {shlex.quote(call['url'])}")


def cluster_to_dict(cluster: ClusterSpec) -> dict[str, Any]:
    data = asdict(cluster)
    data["nodes"] = [asdict(n) for n in cluster.nodes]
    for key in ("adapter_storage", "model_cache"):
        if data[key] is not None:
            data[key] = {k: v for k, v in data[key].items() if v}
    if data["model_cache"] is None:
        del data["model_cache"]
    return data


def read_plan(plan_dir: str | Path) -> tuple[list[RunningGpu], WorkloadSpec, ClusterSpec,
                                             dict[str, Any]]:
    """The running instances, workload, cluster and placement.json of a plan directory."""
    root = Path(plan_dir)
    try:
        placement = json.loads((root / "placement.json").read_text())
        workload = workload_from_dict(json.loads((root / "workload.json").read_text()))
        cluster = cluster_from_dict(json.loads((root / "cluster.json").read_text()))
        gpus = [RunningGpu(name=i["name"], node=i["node"], max_loras=int(i["max_loras"]),
                           max_lora_rank=int(i["max_lora_rank"]),
                           max_cpu_loras=int(i["max_cpu_loras"]),
                           adapters=tuple(a["id"] for a in i["adapters"]),
                           rates_req_s=tuple(float(a["rate_req_s"]) for a in i["adapters"]))
                for i in placement["instances"]]
    except FileNotFoundError as error:
        raise WorkloadSpecError(f"{root} is not a plan directory (missing {error.filename}); "
                                "write one with `lego-embed fleet plan`") from error
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise WorkloadSpecError(f"{root}: a plan file is malformed ({error!r}); write the plan "
                                "again with `lego-embed fleet plan`") from error
    return gpus, workload, cluster, placement

