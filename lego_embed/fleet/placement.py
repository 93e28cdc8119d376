"""Placement of adapters on the fewest GPUs: first-fit decreasing driven by the surrogate,
verified and repaired in the twin; baselines (memory only, fixed adapters per GPU) and the exact
minimum by exhaustive search on tiny instances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lego_embed.errors import WorkloadSpecError
from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.spec import AdapterSpec, WorkloadSpec
from lego_embed.fleet.surrogate import MAX_LORAS_CHOICES, Surrogate
from lego_embed.fleet.twin import STARVATION_THRESHOLD, InstanceConfig, TwinResult, simulate

Feasibility = Callable[[Sequence[AdapterSpec]], "int | None"]


@dataclass
class GpuAssignment:
    """One GPU (one vLLM instance): its adapters and launch settings."""

    adapters: list[AdapterSpec]
    max_loras: int

    @property
    def max_lora_rank(self) -> int:
        return max(a.rank for a in self.adapters)

    @property
    def offered_tok_s(self) -> float:
        return sum(a.token_rate_tok_s for a in self.adapters)

    @property
    def max_cpu_loras(self) -> int:
        """Every adapter in the CPU cache; vLLM requires max_cpu_loras >= max_loras."""
        return max(len(self.adapters), self.max_loras)

    def instance(self, gpu_memory_gib: float | None = None) -> InstanceConfig:
        return InstanceConfig(max_loras=self.max_loras, max_cpu_loras=self.max_cpu_loras,
                              max_lora_rank=self.max_lora_rank, gpu_memory_gib=gpu_memory_gib)


@dataclass
class Plan:
    """A placement: GPUs with their adapters; `twin` holds each GPU's verification result,
    `initial_gpus` the GPU count of the packing rule before twin repair/consolidation."""

    strategy: str
    gpus: list[GpuAssignment]
    twin: list[TwinResult] = field(default_factory=list)
    repairs: int = 0
    initial_gpus: int = 0

    @property
    def n_gpus(self) -> int:
        return len(self.gpus)

    @property
    def starving_gpus(self) -> int:
        return sum(1 for r in self.twin if r.starved)


def surrogate_feasibility(surrogate: Surrogate, calibration: Calibration) -> Feasibility:
    """The max_loras (from MAX_LORAS_CHOICES) under which the surrogate predicts the adapters are
    served without starvation (highest predicted throughput wins), or None."""

    def feasible(adapters: Sequence[AdapterSpec]) -> int | None:
        best, best_fraction = None, -1.0
        n = len(adapters)
        for max_loras in MAX_LORAS_CHOICES:
            prediction = surrogate.predict(adapters, max_loras, calibration)
            if not prediction.starved and prediction.served_fraction > best_fraction:
                best, best_fraction = max_loras, prediction.served_fraction
            if max_loras >= n:
                break
        return best

    return feasible


def first_fit_decreasing(adapters: Sequence[AdapterSpec], feasible: Feasibility,
                         strategy: str = "ffd") -> Plan:
    """Adapters sorted by offered load (largest first), each on the first GPU that stays
    feasible, else on a new GPU (alone, with its own best max_loras)."""
    gpus: list[GpuAssignment] = []
    for adapter in sorted(adapters, key=lambda a: (-a.token_rate_tok_s, a.adapter_id)):
        for gpu in gpus:
            max_loras = feasible([*gpu.adapters, adapter])
            if max_loras is not None:
                gpu.adapters.append(adapter)
                gpu.max_loras = max_loras
                break
        else:
            alone = feasible([adapter])
            gpus.append(GpuAssignment([adapter], alone if alone is not None else 8))
    return Plan(strategy=strategy, gpus=gpus, initial_gpus=len(gpus))


def memory_only_plan(workload: WorkloadSpec, calibration: Calibration) -> Plan:
    """Baseline: pack adapters so that every adapter has a GPU slot (max_loras = adapters on the
    GPU, no swapping), as many per GPU as GPU memory allows; load is ignored."""
    gpus: list[GpuAssignment] = []
    memory = calibration.memory
    for adapter in sorted(workload.adapters, key=lambda a: (-a.rank, a.adapter_id)):
        for gpu in gpus:
            n = len(gpu.adapters) + 1
            rank = max(gpu.max_lora_rank, adapter.rank)
            if n <= max(MAX_LORAS_CHOICES) and memory.fits(n, rank, workload.gpu.memory_gib):
                gpu.adapters.append(adapter)
                gpu.max_loras = n
                break
        else:
            gpus.append(GpuAssignment([adapter], 1))
    return Plan(strategy="memory_only", gpus=gpus, initial_gpus=len(gpus))


def fixed_plan(workload: WorkloadSpec, per_gpu: int = 32) -> Plan:
    """Baseline: a fixed number of adapters per GPU (in id order), max_loras = per_gpu."""
    ordered = sorted(workload.adapters, key=lambda a: a.adapter_id)
    gpus = [GpuAssignment(list(ordered[i:i + per_gpu]), per_gpu)
            for i in range(0, len(ordered), per_gpu)]
    return Plan(strategy=f"fixed_{per_gpu}", gpus=gpus, initial_gpus=len(gpus))


SAFETY_MARGIN = 0.02


def passes(result: TwinResult, margin: float = SAFETY_MARGIN) -> bool:
    """No memory error and a served fraction at least `margin` above the starvation limit."""
    return not result.memory_error and \
        result.throughput_to_ideal >= 1.0 - STARVATION_THRESHOLD + margin


def verify_and_repair(plan: Plan, calibration: Calibration, duration_s: float = 1800.0,
                      gpu_memory_gib: float | None = None, max_rounds: int = 12,
                      feasible: Feasibility | None = None, seed: int = 0) -> Plan:
    """Simulates every GPU in the twin; a GPU that does not pass (starving, or within
    SAFETY_MARGIN of it) keeps the largest adapters that fit its measured served fraction (minus
    10%) and the rest move to a new GPU, until every GPU passes. `feasible`, when given,
    re-chooses max_loras of changed GPUs."""
    results: dict[int, TwinResult] = {}
    for _ in range(max_rounds):
        changed = False
        for index in range(len(plan.gpus)):
            if index in results:
                continue
            gpu = plan.gpus[index]
            result = simulate(gpu.adapters, gpu.instance(gpu_memory_gib), calibration,
                              duration_s=duration_s, seed=seed + index)
            results[index] = result
            if passes(result) or len(gpu.adapters) == 1:
                continue
            keep_tok_s = gpu.offered_tok_s * max(0.1, result.throughput_to_ideal - 0.1)
            if result.memory_error:
                keep_tok_s = gpu.offered_tok_s / 2
            ordered = sorted(gpu.adapters, key=lambda a: -a.token_rate_tok_s)
            kept: list[AdapterSpec] = []
            total = 0.0
            for adapter in ordered:
                if not kept or total + adapter.token_rate_tok_s <= keep_tok_s:
                    kept.append(adapter)
                    total += adapter.token_rate_tok_s
            if len(kept) == len(ordered):
                kept = ordered[: max(1, len(ordered) // 2)]
            moved = [a for a in ordered if a not in kept]
            gpu.adapters = kept
            new_gpu = GpuAssignment(moved, gpu.max_loras)
            for g in (gpu, new_gpu):
                chosen = feasible(g.adapters) if feasible is not None else None
                g.max_loras = chosen if chosen is not None else _safe_max_loras(
                    g, calibration, gpu_memory_gib)
            plan.gpus.append(new_gpu)
            del results[index]
            plan.repairs += 1
            changed = True
        if not changed:
            break
    plan.twin = [results[i] if i in results else simulate(
        g.adapters, g.instance(gpu_memory_gib), calibration, duration_s=duration_s,
        seed=seed + i) for i, g in enumerate(plan.gpus)]
    return plan


def _safe_max_loras(gpu: GpuAssignment, calibration: Calibration,
                    gpu_memory_gib: float | None) -> int:
    """The largest max_loras not above the adapter count (and the old setting) that fits."""
    rank = gpu.max_lora_rank
    for choice in sorted({*MAX_LORAS_CHOICES, len(gpu.adapters)}, reverse=True):
        if choice <= max(len(gpu.adapters), 8) and choice <= max(gpu.max_loras, 8) and \
                calibration.memory.fits(choice, rank, gpu_memory_gib):
            return choice
    return 8


def exact_minimum_gpus(adapters: Sequence[AdapterSpec], feasible: Feasibility,
                       limit: int = 10) -> int:
    """Fewest GPUs over every partition of the adapters into feasible groups (exhaustive search
    with branch and bound; tiny instances only)."""
    if len(adapters) > limit:
        raise WorkloadSpecError(f"exact search is for at most {limit} adapters, got "
                                f"{len(adapters)}")
    items = sorted(adapters, key=lambda a: -a.token_rate_tok_s)
    cache: dict[tuple[str, ...], bool] = {}

    def ok(group: list[AdapterSpec]) -> bool:
        key = tuple(sorted(a.adapter_id for a in group))
        if key not in cache:
            cache[key] = feasible(group) is not None
        return cache[key]

    best = len(items)

    def search(i: int, bins: list[list[AdapterSpec]]) -> None:
        nonlocal best
        if len(bins) >= best:
            return
        if i == len(items):
            best = len(bins)
            return
        for b in bins:
            b.append(items[i])
            if ok(b):
                search(i + 1, bins)
            b.pop()
        bins.append([items[i]])
        search(i + 1, bins)
        bins.pop()

    search(0, [])
    return best


def consolidate(plan: Plan, calibration: Calibration, duration_s: float = 1800.0,
                gpu_memory_gib: float | None = None, feasible: Feasibility | None = None,
                seed: int = 0, max_attempts: int = 8) -> Plan:
    """Twin-verified consolidation after repair: merge the two least-loaded GPUs into one while
    the merged GPU passes in the twin (the surrogate is conservative near its decision boundary;
    the twin has the last word)."""
    if len(plan.twin) != len(plan.gpus):
        plan = verify_and_repair(plan, calibration, duration_s, gpu_memory_gib,
                                 feasible=feasible, seed=seed)
    for attempt in range(max_attempts):
        if len(plan.gpus) < 2:
            break
        order = sorted(range(len(plan.gpus)), key=lambda i: plan.gpus[i].offered_tok_s)
        a, b = order[0], order[1]
        merged = GpuAssignment(plan.gpus[a].adapters + plan.gpus[b].adapters,
                               max(plan.gpus[a].max_loras, plan.gpus[b].max_loras))
        chosen = feasible(merged.adapters) if feasible is not None else None
        merged.max_loras = chosen if chosen is not None else _safe_max_loras(
            merged, calibration, gpu_memory_gib)
        result = simulate(merged.adapters, merged.instance(gpu_memory_gib), calibration,
                          duration_s=duration_s, seed=seed + 1000 + attempt)
        if not passes(result):
            break
        keep = [i for i in range(len(plan.gpus)) if i not in (a, b)]
        plan.gpus = [plan.gpus[i] for i in keep] + [merged]
        plan.twin = [plan.twin[i] for i in keep] + [result]
    return plan
