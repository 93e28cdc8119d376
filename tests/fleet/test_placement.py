"""Placement: validity, FFD against the exact optimum, twin repair, operator output."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import pytest

from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.placement import (
    GpuAssignment,
    Plan,
    consolidate,
    exact_minimum_gpus,
    first_fit_decreasing,
    fixed_plan,
    memory_only_plan,
    verify_and_repair,
)
from lego_embed.fleet.spec import AdapterSpec, SyntheticWorkloadConfig, synthetic_workload
from lego_embed.fleet.vllm_output import read_plan, serve_command, write_plan


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
        assert calibration.memory.fits(gpu.max_loras, gpu.max_lora_rank)


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
    repaired = verify_and_repair(plan, calibration, duration_s=300.0)
    assert repaired.repairs >= 1
    assert repaired.starving_gpus == 0
    _assert_valid(repaired, adapters, calibration)


def test_operator_output_round_trips(tmp_path: Path, calibration: Calibration) -> None:
    workload = synthetic_workload("w", SyntheticWorkloadConfig(
        n_adapters=40, total_rate_req_s=4.0, seed=2))
    plan = first_fit_decreasing(workload.adapters, capacity_oracle(1000.0, 16))
    write_plan(plan, workload, tmp_path)
    back, spec = read_plan(tmp_path)
    assert spec == workload
    assert [[a.adapter_id for a in g.adapters] for g in back.gpus] == \
        [[a.adapter_id for a in g.adapters] for g in plan.gpus]
    command = serve_command(plan.gpus[0], 0, "Qwen/Qwen2.5-7B-Instruct", "adapters")
    assert command.count("=adapters/") == len(plan.gpus[0].adapters)
    assert f"--max-loras {plan.gpus[0].max_loras}" in command
    assert "--max-lora-rank" in command and "--enable-lora" in command
    small = GpuAssignment(plan.gpus[0].adapters[:3], 16)
    assert "--max-cpu-loras 16" in serve_command(small, 1, "m", "adapters")
    routing = (tmp_path / "routing.json").read_text()
    assert all(a.adapter_id in routing for a in workload.adapters)


def test_consolidation_merges_light_gpus_only_when_the_twin_agrees(
        calibration: Calibration) -> None:
    light = [AdapterSpec(f"l{i}", 8, 0.2) for i in range(6)]
    plan = Plan("split", [GpuAssignment(light[:3], 8), GpuAssignment(light[3:], 8)])
    merged = consolidate(plan, calibration, duration_s=200.0)
    assert merged.n_gpus == 1 and merged.starving_gpus == 0
    _assert_valid(merged, light, calibration)
    heavy = [AdapterSpec(f"h{i}", 16, 4.0) for i in range(8)]
    plan = Plan("split", [GpuAssignment(heavy[:4], 8), GpuAssignment(heavy[4:], 8)])
    kept = consolidate(plan, calibration, duration_s=200.0)
    assert kept.n_gpus == 2
