"""Stable re-plans: start from the running placement, keep every adapter where it is unless a
move saves a GPU or fixes a GPU that misses the criterion, and say what changes (the diff) and
how to apply it without restarting vLLM (runtime LoRA load/unload calls).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.placement import (
    Criterion,
    GpuAssignment,
    TwinCheck,
    first_fit_decreasing,
    free_a_gpu,
    surrogate_feasibility,
    verify_and_repair,
)
from lego_embed.fleet.planner import (
    FleetPlan,
    PlanInfeasibleError,
    capacities,
    check_inputs,
    cluster_failure,
    gpu_failures,
    name_gpus,
    replicate,
    unreachable_targets,
)
from lego_embed.fleet.spec import ClusterSpec, WorkloadSpec
from lego_embed.fleet.surrogate import Surrogate


@dataclass(frozen=True)
class RunningGpu:
    """One instance of the previous plan as it runs: name, node, vLLM flags, adapter ids and
    the rate (req/s) each one gets here (its share of the adapter's traffic)."""

    name: str
    node: str
    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int
    adapters: tuple[str, ...]
    rates_req_s: tuple[float, ...]


@dataclass
class PlanDiff:
    """What a re-plan changes: adapters moved between instances (ids -> instance names before
    and after), added and removed adapters, replica counts that changed, instances started and
    stopped, instances whose flags changed (they restart), and the moved fraction of the
    adapters present in both plans."""

    moved: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    added: dict[str, list[str]] = field(default_factory=dict)
    removed: dict[str, list[str]] = field(default_factory=dict)
    replicas_changed: dict[str, tuple[int, int]] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    kept_adapters: int = 0

    @property
    def moved_fraction(self) -> float:
        return len(self.moved) / self.kept_adapters if self.kept_adapters else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "moved_adapters": len(self.moved), "adapters_in_both_plans": self.kept_adapters,
            "moved_fraction": round(self.moved_fraction, 4),
            "moved": {k: {"from": a, "to": b} for k, (a, b) in sorted(self.moved.items())},
            "added": dict(sorted(self.added.items())),
            "removed": dict(sorted(self.removed.items())),
            "replicas_changed": {k: {"before": a, "after": b}
                                 for k, (a, b) in sorted(self.replicas_changed.items())},
            "instances_started": self.started, "instances_stopped": self.stopped,
            "instances_restarted": self.restarted,
        }


def _keep_replicas(previous: list[RunningGpu], replicas: dict[str, int]) -> set[tuple[str, str]]:
    """(adapter id, instance) pairs kept: each adapter's first `replicas` instances in plan
    order."""
    seen: dict[str, int] = defaultdict(int)
    kept = set()
    for gpu in previous:
        for adapter_id in gpu.adapters:
            if adapter_id in replicas and seen[adapter_id] < replicas[adapter_id]:
                seen[adapter_id] += 1
                kept.add((adapter_id, gpu.name))
    return kept


def replan_fleet(workload: WorkloadSpec, cluster: ClusterSpec, calibration: Calibration,
                 surrogate: Surrogate, previous: list[RunningGpu],
                 verify_duration_s: float = 1800.0, seed: int = 0,
                 max_freeing_attempts: int = 4) -> tuple[FleetPlan, PlanDiff]:
    """Re-plans `workload` from the running `previous` placement (see the module docstring).
    Running instances keep their flags (so adapters move by runtime loading); a running GPU is
    judged by the targets without margins, a changed or new one with them. New items go where
    the surrogate accepts them; then up to `max_freeing_attempts` times the least-loaded GPU is
    emptied onto the others when the twin agrees (a GPU saved)."""
    rules = check_inputs(workload, cluster, calibration)
    criterion = Criterion(targets=workload.targets)
    check = TwinCheck(calibration, duration_s=verify_duration_s, seed=seed,
                      max_model_len=workload.max_model_len)
    capacity = capacities(workload, check, criterion, rules)
    message = unreachable_targets(workload, capacity)
    if message:
        raise PlanInfeasibleError(message)
    items, replicas = replicate(workload, capacity)
    by_id = {a.adapter_id: a for a in items}
    kept = _keep_replicas(previous, replicas)
    gpus = []
    for old in previous:
        adapters = [by_id[a] for a in old.adapters if (a, old.name) in kept]
        if adapters:
            gpus.append(GpuAssignment(adapters, old.max_loras, name=old.name, node=old.node,
                                      fixed_max_lora_rank=old.max_lora_rank,
                                      fixed_max_cpu_loras=old.max_cpu_loras, rules=rules))
    placed: dict[str, int] = defaultdict(int)
    for adapter_id, _ in kept:
        placed[adapter_id] += 1
    to_place = [by_id[a.adapter_id] for a in workload.adapters
                for _ in range(replicas[a.adapter_id] - placed[a.adapter_id])]
    feasible = surrogate_feasibility(surrogate, calibration, criterion)
    plan = first_fit_decreasing(to_place, feasible, strategy="replan", gpus=gpus,
                                keep_max_loras=True, rules=rules)
    running = frozenset(old.name for old in previous)
    plan = verify_and_repair(plan, check, criterion, feasible, keep=running)
    for _ in range(max_freeing_attempts):
        if not free_a_gpu(plan, check, criterion):
            break
    plan.twin = [check.run(g, i) for i, g in enumerate(plan.gpus)]
    name_gpus(plan, cluster)
    fleet = FleetPlan(workload, cluster, calibration, rules, criterion, check, plan, replicas)
    fleet.failures = gpu_failures(fleet, keep=running)
    if plan.n_gpus > cluster.total_gpus:
        fleet.failures.append(cluster_failure(str(plan.n_gpus), cluster,
                                              sum(g.offered_tok_s for g in plan.gpus)))
    return fleet, diff_plans(previous, fleet)


def diff_plans(previous: list[RunningGpu], fleet: FleetPlan) -> PlanDiff:
    """The changes from the running placement to the new one."""
    before: dict[str, list[str]] = defaultdict(list)
    for gpu in previous:
        for adapter_id in gpu.adapters:
            before[adapter_id].append(gpu.name)
    after: dict[str, list[str]] = defaultdict(list)
    for gpu in fleet.plan.gpus:
        for adapter in gpu.adapters:
            after[adapter.adapter_id].append(gpu.name)
    diff = PlanDiff()
    for adapter_id in sorted(set(before) | set(after)):
        old, new = sorted(before.get(adapter_id, [])), sorted(after.get(adapter_id, []))
        if not old:
            diff.added[adapter_id] = new
        elif not new:
            diff.removed[adapter_id] = old
        else:
            diff.kept_adapters += 1
            if len(old) != len(new):
                diff.replicas_changed[adapter_id] = (len(old), len(new))
            if old != new:
                diff.moved[adapter_id] = (old, new)
    old_gpus = {g.name: g for g in previous}
    new_names = {g.name for g in fleet.plan.gpus}
    diff.started = sorted(new_names - set(old_gpus))
    diff.stopped = sorted(set(old_gpus) - new_names)
    diff.restarted = sorted(
        g.name for g in fleet.plan.gpus if g.name in old_gpus and (
            old_gpus[g.name].max_loras, old_gpus[g.name].max_lora_rank,
            old_gpus[g.name].max_cpu_loras, old_gpus[g.name].node)
        != (g.max_loras, g.max_lora_rank, g.max_cpu_loras, g.node))
    return diff


def runtime_lora_calls(diff: PlanDiff, fleet: FleetPlan, url_of) -> list[dict[str, Any]]:
    """The vLLM runtime LoRA calls that apply the diff to running instances without a restart,
    in order: load every adapter on the instances it joins, (then the router is updated), then
    unload it from the instances it left. `url_of(instance)` is its base URL. Instances that
    start or stop get their adapters from their --lora-modules and need no calls."""
    rules = fleet.rules
    mount = fleet.cluster.adapter_storage.mount_path
    skip = set(diff.started) | set(diff.stopped)
    loads, unloads = [], []
    changes = {**{k: ([], v) for k, v in diff.added.items()},
               **{k: (v, []) for k, v in diff.removed.items()}, **diff.moved}
    for adapter_id, (old, new) in sorted(changes.items()):
        for instance in sorted(set(new) - set(old) - skip):
            loads.append({"phase": "load", "instance": instance, "method": "POST",
                          "url": url_of(instance) + rules.load_endpoint,
                          "body": {"lora_name": adapter_id,
                                   "lora_path": f"{mount}/{adapter_id}"}})
        for instance in sorted(set(old) - set(new) - skip):
            unloads.append({"phase": "unload", "instance": instance, "method": "POST",
                            "url": url_of(instance) + rules.unload_endpoint,
                            "body": {"lora_name": adapter_id}})
    return loads + unloads
