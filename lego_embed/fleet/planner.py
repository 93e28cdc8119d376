"""The fleet planner: checks a workload against its calibration, the vLLM version's rules and
the cluster, replicates adapters hotter than one GPU, packs the rest with the surrogate, verifies
and repairs every GPU in the twin against the latency targets, frees GPUs whose adapters fit on
the others (the same compaction a re-plan applies), and says honestly what fails.

`plan_fleet` answers a FleetPlan whose `failures` list what still misses after repair (with what
to change); an input that can never be planned raises a LegoEmbedError at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from lego_embed.errors import CalibrationError, WorkloadSpecError
from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.placement import (
    Criterion,
    GpuAssignment,
    Plan,
    TwinCheck,
    consolidate,
    first_fit_decreasing,
    free_a_gpu,
    surrogate_feasibility,
    verify_and_repair,
)
from lego_embed.fleet.spec import AdapterSpec, ClusterSpec, WorkloadSpec
from lego_embed.fleet.surrogate import Surrogate
from lego_embed.fleet.twin import InstanceConfig, simulate
from lego_embed.fleet.vllm_rules import VllmRules, rules_for

REPLICA_FILL = 0.8
CAPACITY_DURATION_S = 900.0
MIN_RATE_REQ_S = 0.01
MAX_RATE_REQ_S = 4096.0
FREEING_ATTEMPTS = 4


@dataclass(frozen=True)
class Capacity:
    """What one GPU serves of a single adapter of a given shape within the criterion: the
    largest rate found (req/s; 0 when even MIN_RATE_REQ_S misses) and, when it is 0, the twin's
    failures at that lowest rate."""

    rate_req_s: float
    token_rate_tok_s: float
    failures_at_min_rate: tuple[str, ...] = ()


@dataclass
class FleetPlan:
    """A planned fleet: the placement (`plan`, GPUs named and placed on nodes), how many
    replicas each adapter has, the rules and checks it was made under, and `failures` (empty
    when every GPU meets the criterion in the twin and the cluster has the GPUs)."""

    workload: WorkloadSpec
    cluster: ClusterSpec
    calibration: Calibration
    rules: VllmRules
    criterion: Criterion
    check: TwinCheck
    plan: Plan
    replicas: dict[str, int]
    failures: list[str] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return not self.failures


class PlanInfeasibleError(WorkloadSpecError):
    """The workload cannot be served within its targets on this cluster; the message says what
    to change."""


def check_inputs(workload: WorkloadSpec, cluster: ClusterSpec,
                 calibration: Calibration) -> VllmRules:
    """Refuses what no placement can fix: a calibration of another model or GPU, ranks or a
    max_model_len the vLLM version or model does not allow, a model that does not start on the
    GPU with one adapter slot. Returns the rules of the calibration's vLLM version."""
    if calibration.model != workload.base_model or calibration.gpu != cluster.gpu:
        raise CalibrationError(
            f"the calibration is for {calibration.model} on {calibration.gpu}, the plan asks for "
            f"{workload.base_model} on {cluster.gpu}; calibrate that pair first with "
            "`lego-embed fleet calibrate`")
    rules = rules_for(calibration.vllm_version)
    for adapter in workload.adapters:
        try:
            rules.max_lora_rank_for(adapter.rank)
        except WorkloadSpecError as error:
            raise WorkloadSpecError(f"adapter {adapter.adapter_id}: {error}") from error
    if workload.max_model_len > calibration.model_max_len:
        raise WorkloadSpecError(
            f"max_model_len {workload.max_model_len} exceeds what {calibration.model} supports "
            f"({calibration.model_max_len} tokens): lower max_model_len")
    rank = rules.max_lora_rank_for(max(a.rank for a in workload.adapters))
    memory = calibration.memory
    if not memory.fits(1, rank, max_model_len=workload.max_model_len):
        kv = memory.kv_cache_tokens(1, rank)
        advice = (f"lower max_model_len to at most {kv}" if kv > 0 else
                  "the weights alone do not fit: use a GPU with more memory")
        raise PlanInfeasibleError(
            f"{calibration.model} on {calibration.gpu} ({memory.gpu_memory_gib:.1f} GiB, "
            f"{memory.utilization:.0%} usable) leaves a KV cache of {max(kv, 0)} tokens with one "
            f"LoRA slot at --max-lora-rank {rank}; vLLM needs at least max_model_len = "
            f"{workload.max_model_len} and refuses to start: {advice}")
    return rules


def single_adapter_capacity(adapter: AdapterSpec, check: TwinCheck, criterion: Criterion,
                            rules: VllmRules, steps: int = 7) -> Capacity:
    """The largest rate of this adapter (its rank and lengths) that one GPU serves alone within
    the criterion, by doubling then bisection in the twin."""

    def failures_at(rate: float) -> list[str]:
        probe = replace(adapter, rate_req_s=rate)
        config = InstanceConfig(max_loras=1, max_cpu_loras=1,
                                max_lora_rank=rules.max_lora_rank_for(adapter.rank),
                                gpu_memory_gib=check.gpu_memory_gib,
                                max_model_len=check.max_model_len)
        result = simulate([probe], config, check.calibration,
                          duration_s=min(check.duration_s, CAPACITY_DURATION_S), seed=check.seed)
        return criterion.failures(result)

    first = failures_at(MIN_RATE_REQ_S)
    if first:
        return Capacity(0.0, 0.0, tuple(first))
    low, high = MIN_RATE_REQ_S, 1.0
    while not failures_at(high):
        low, high = high, high * 2.0
        if high > MAX_RATE_REQ_S:
            break
    for _ in range(steps):
        middle = math.sqrt(low * high)
        if failures_at(middle):
            high = middle
        else:
            low = middle
    return Capacity(low, low * (adapter.prompt.mean_tokens + adapter.output.mean_tokens))


def replicate(workload: WorkloadSpec, capacity: dict[str, Capacity]
              ) -> tuple[list[AdapterSpec], dict[str, int]]:
    """Placement items: an adapter whose rate exceeds REPLICA_FILL of what one GPU serves is
    split into that many replicas, each with an equal share of its rate."""
    items, replicas = [], {}
    for adapter in workload.adapters:
        cap = capacity[adapter.adapter_id].rate_req_s
        k = max(1, math.ceil(adapter.rate_req_s / (REPLICA_FILL * cap))) if cap > 0 else 1
        replicas[adapter.adapter_id] = k
        items.extend([replace(adapter, rate_req_s=adapter.rate_req_s / k)] * k)
    return items, replicas


def _shape(adapter: AdapterSpec, rules: VllmRules) -> tuple:
    return rules.max_lora_rank_for(adapter.rank), adapter.prompt, adapter.output


def capacities(workload: WorkloadSpec, check: TwinCheck, criterion: Criterion,
               rules: VllmRules) -> dict[str, Capacity]:
    """single_adapter_capacity for every adapter, computed once per shape (rank, lengths)."""
    by_shape: dict[tuple, Capacity] = {}
    out = {}
    for adapter in workload.adapters:
        key = _shape(adapter, rules)
        if key not in by_shape:
            by_shape[key] = single_adapter_capacity(adapter, check, criterion, rules)
        out[adapter.adapter_id] = by_shape[key]
    return out


def unreachable_targets(workload: WorkloadSpec, capacity: dict[str, Capacity]) -> str | None:
    """A message when some adapter misses the targets even alone at the lowest rate."""
    stuck = [a for a in workload.adapters if capacity[a.adapter_id].rate_req_s <= 0]
    if not stuck:
        return None
    reasons = capacity[stuck[0].adapter_id].failures_at_min_rate
    return (f"{len(stuck)} adapter(s) (e.g. {stuck[0].adapter_id}) miss the criterion even alone "
            f"on an idle GPU at {MIN_RATE_REQ_S} req/s: {'; '.join(reasons)}. Relax "
            "latency_targets (the twin's value above is the floor) or shorten their prompts and "
            "outputs")


def gpu_lower_bound(items: list[AdapterSpec], capacity: dict[str, Capacity]) -> int:
    """GPUs needed at least: offered tokens/s over the best single-adapter GPU capacity."""
    best = max(c.token_rate_tok_s for c in capacity.values())
    return math.ceil(sum(a.token_rate_tok_s for a in items) / best)


def name_gpus(plan: Plan, cluster: ClusterSpec) -> None:
    """Gives unnamed GPUs the next free names vllm-<i> and nodes with a free GPU (in order)."""
    used = {g.name for g in plan.gpus if g.name}
    counter = 0
    per_node = {n.name: 0 for n in cluster.nodes}
    for gpu in plan.gpus:
        if gpu.node in per_node:
            per_node[gpu.node] += 1
    for gpu in plan.gpus:
        if not gpu.name:
            while f"vllm-{counter}" in used:
                counter += 1
            gpu.name = f"vllm-{counter}"
            used.add(gpu.name)
        if gpu.node not in per_node:
            free = [n for n in cluster.nodes if per_node[n.name] < n.gpus]
            gpu.node = free[0].name if free else ""
            if free:
                per_node[free[0].name] += 1


def gpu_failures(fleet: FleetPlan, keep: frozenset[str] = frozenset()) -> list[str]:
    """One line per GPU that misses the criterion in its final twin check, with advice."""
    out = []
    for gpu, result in zip(fleet.plan.gpus, fleet.plan.twin, strict=True):
        missed = fleet.criterion.failures(result, keep=gpu.name in keep)
        if not missed:
            continue
        what = (f"adapter {gpu.adapters[0].adapter_id} alone" if len(gpu.adapters) == 1 else
                f"{len(gpu.adapters)} adapters")
        advice = ("relax the latency targets or shorten this adapter's prompts/outputs"
                  if len(gpu.adapters) == 1 else
                  "relax the latency targets, or lower these adapters' rates")
        out.append(f"GPU {gpu.name} ({what}, {gpu.offered_tok_s:.0f} tok/s offered): "
                   f"{'; '.join(missed)}; {advice}")
    return out


def cluster_failure(needs: str, cluster: ClusterSpec, offered_tok_s: float) -> str:
    """The failure line of a plan larger than the cluster."""
    return (f"the plan needs {needs} GPUs ({offered_tok_s:.0f} tok/s offered) but cluster "
            f"{cluster.name} has {cluster.total_gpus} {cluster.gpu}: add nodes to the cluster "
            "file, lower the rates, or relax the latency targets")


def plan_fleet(workload: WorkloadSpec, cluster: ClusterSpec, calibration: Calibration,
               surrogate: Surrogate, verify_duration_s: float = 1800.0,
               seed: int = 0) -> FleetPlan:
    """Plans a workload from scratch (see the module docstring)."""
    rules = check_inputs(workload, cluster, calibration)
    criterion = Criterion(targets=workload.targets)
    check = TwinCheck(calibration, duration_s=verify_duration_s, seed=seed,
                      max_model_len=workload.max_model_len)
    capacity = capacities(workload, check, criterion, rules)
    message = unreachable_targets(workload, capacity)
    if message:
        raise PlanInfeasibleError(message)
    items, replicas = replicate(workload, capacity)
    bound = gpu_lower_bound(items, capacity)
    offered = sum(a.token_rate_tok_s for a in items)
    if bound > cluster.total_gpus:
        raise PlanInfeasibleError(cluster_failure(f"at least {bound}", cluster, offered))
    feasible = surrogate_feasibility(surrogate, calibration, criterion)
    plan = first_fit_decreasing(items, feasible, strategy="ffd_surrogate", rules=rules)
    plan = verify_and_repair(plan, check, criterion, feasible)
    plan = consolidate(plan, check, criterion, feasible)
    for _ in range(FREEING_ATTEMPTS):
        if not free_a_gpu(plan, check, criterion):
            break
    plan.twin = [check.run(g, i) for i, g in enumerate(plan.gpus)]
    name_gpus(plan, cluster)
    fleet = FleetPlan(workload, cluster, calibration, rules, criterion, check, plan, replicas)
    fleet.failures = gpu_failures(fleet)
    if plan.n_gpus > cluster.total_gpus:
        fleet.failures.append(cluster_failure(str(plan.n_gpus), cluster, offered))
    return fleet


def rebuild_gpu(adapters: list[AdapterSpec], max_loras: int, rules: VllmRules, name: str,
                node: str, max_lora_rank: int, max_cpu_loras: int) -> GpuAssignment:
    """A running instance as a GpuAssignment with its flags fixed."""
    return GpuAssignment(adapters, max_loras, name=name, node=node,
                         fixed_max_lora_rank=max_lora_rank, fixed_max_cpu_loras=max_cpu_loras,
                         rules=rules)
