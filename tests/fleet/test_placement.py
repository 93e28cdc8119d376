"""Placement: validity, FFD against the exact optimum, replicas never share a GPU, twin repair
against latency targets, consolidation."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.placement import (
    Criterion,
    GpuAssignment,
    Plan,
    TwinCheck,
    consolidate,
    exact_minimum_gpus,
    first_fit_decreasing,
    fixed_plan,
    memory_only_plan,
    verify_and_repair,
)
from lego_embed.fleet.spec import (
    AdapterSpec,
    LatencyTargets,
    SyntheticWorkloadConfig,
    synthetic_workload,
)


def capacity_oracle(capacity_tok_s: float, max_adapters: int):
    """A transparent feasibility test: total offered load and adapter count under caps."""

    def feasible(adapters: Sequence[AdapterSpec]) -> int | None:
        load = sum(a.token_rate_tok_s for a in adapters)
        return 16 if load <= capacity_tok_s and len(adapters) <= max_adapters else None

    return feasible


def _assert_valid(plan: Plan, adapters: Sequence[AdapterSpec], calibration: Calibration) -> None:
    placed = [a.adapter_id for g in plan.gpus for a in g.adapters]
    assert sorted(placed) == sorted(a.adapter_id for a in adapters)
    for gpu in plan.gpus:
        assert gpu.adapters
        assert calibration.memory.fits(gpu.max_loras, gpu.max_lora_rank, max_model_len=4096)
        assert gpu.max_lora_rank in (8, 16, 32, 64, 128, 256, 320, 512)


def _brute_force_minimum(adapters: Sequence[AdapterSpec], feasible) -> int:
    n = len(adapters)
    for k in range(1, n + 1):
        for labels in itertools.product(range(k), repeat=n):
            bins = [[a for a, b in zip(adapters, labels, strict=True) if b == i]
                    for i in range(k)]
            if all(bins) and all(feasible(b) is not None for b in bins):
                return k
    return n


@pytest.mark.parametrize("seed", range(6))
def test_ffd_matches_or_stays_close_to_the_exact_optimum(seed: int) -> None:
    workload = synthetic_workload("t", SyntheticWorkloadConfig(
        n_adapters=7, total_rate_req_s=20.0, zipf_s=0.7, seed=seed))
    feasible = capacity_oracle(capacity_tok_s=3000.0, max_adapters=4)
    ffd = first_fit_decreasing(workload.adapters, feasible)
    exact = exact_minimum_gpus(workload.adapters, feasible)
    assert exact == _brute_force_minimum(workload.adapters, feasible)
    assert exact <= ffd.n_gpus <= (11 * exact) // 9 + 1
    for gpu in ffd.gpus:
        assert feasible(gpu.adapters) is not None


def test_plans_place_every_adapter_once_within_memory(calibration: Calibration) -> None:
    workload = synthetic_workload("v", SyntheticWorkloadConfig(
        n_adapters=300, total_rate_req_s=10.0, seed=1))
    for plan in (memory_only_plan(workload, calibration), fixed_plan(workload, 32),
                 first_fit_decreasing(workload.adapters, capacity_oracle(4000.0, 64))):
        _assert_valid(plan, workload.adapters, calibration)
    assert fixed_plan(workload, 32).n_gpus == 10
    assert memory_only_plan(workload, calibration).n_gpus >= 2


def test_twin_repair_removes_starvation(calibration: Calibration) -> None:
    adapters = [AdapterSpec(f"a{i}", 16, 2.0) for i in range(16)]
    plan = Plan("overloaded", [GpuAssignment(adapters, 16)])
    repaired = verify_and_repair(plan, TwinCheck(calibration, duration_s=300.0))
    assert repaired.repairs >= 1
    assert repaired.starving_gpus == 0
    _assert_valid(repaired, adapters, calibration)


def test_a_slot_starved_gpu_is_repaired_with_one_slot_per_adapter(
        calibration: Calibration) -> None:
    adapters = [AdapterSpec(f"a{i}", 16, 0.1) for i in range(32)]
    check = TwinCheck(calibration, duration_s=300.0)
    strict = Criterion(targets=LatencyTargets(ttft_ms={99: 2000.0}))
    first = check.run(GpuAssignment(list(adapters), 8), 0)
    assert Criterion().passes(first) and not strict.passes(first)
    assert any("TTFT p99" in f for f in strict.failures(first))
    repaired = verify_and_repair(Plan("one", [GpuAssignment(list(adapters), 8)]), check, strict)
    assert repaired.n_gpus == 1 and repaired.gpus[0].max_loras == 32
    assert strict.passes(repaired.twin[0])


def test_twin_repair_splits_a_gpu_that_misses_a_latency_target(calibration: Calibration) -> None:
    adapters = [AdapterSpec(f"a{i}", 16, 1.6) for i in range(16)]
    check = TwinCheck(calibration, duration_s=300.0)
    strict = Criterion(targets=LatencyTargets(ttft_ms={99: 150.0}, itl_ms={99: 60.0}))
    first = check.run(GpuAssignment(list(adapters), 16), 0)
    assert Criterion().passes(first) and not strict.passes(first)
    repaired = verify_and_repair(Plan("one", [GpuAssignment(list(adapters), 16)]), check, strict)
    assert repaired.n_gpus > 1
    assert all(strict.passes(r) for r in repaired.twin)
    _assert_valid(repaired, adapters, calibration)


def test_replicas_of_one_adapter_never_share_a_gpu() -> None:
    hot = [AdapterSpec("hot", 8, 1.0)] * 3
    cold = [AdapterSpec(f"c{i}", 8, 0.1) for i in range(4)]
    plan = first_fit_decreasing(hot + cold, capacity_oracle(1e9, 100))
    homes = [g for g in plan.gpus if any(a.adapter_id == "hot" for a in g.adapters)]
    assert len(homes) == 3
    assert all(sum(a.adapter_id == "hot" for a in g.adapters) == 1 for g in homes)


def test_consolidation_merges_light_gpus_only_when_the_twin_agrees(
        calibration: Calibration) -> None:
    check = TwinCheck(calibration, duration_s=200.0)
    light = [AdapterSpec(f"l{i}", 8, 0.2) for i in range(6)]
    plan = Plan("split", [GpuAssignment(light[:3], 8), GpuAssignment(light[3:], 8)])
    merged = consolidate(plan, check)
    assert merged.n_gpus == 1 and merged.starving_gpus == 0
    _assert_valid(merged, light, calibration)
    heavy = [AdapterSpec(f"h{i}", 16, 4.0) for i in range(8)]
    plan = Plan("split", [GpuAssignment(heavy[:4], 8), GpuAssignment(heavy[4:], 8)])
    kept = consolidate(plan, check)
    assert kept.n_gpus == 2
