"""The planner end to end in the twin: latency targets met or an honest refusal, replicas for
hot adapters, and every bad input refused with what to change."""

from __future__ import annotations

from dataclasses import replace

import pytest
from fleet_helpers import make_cluster

from lego_embed.errors import CalibrationError, WorkloadSpecError
from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.deploy import routes
from lego_embed.fleet.planner import PlanInfeasibleError, plan_fleet
from lego_embed.fleet.spec import (
    AdapterSpec,
    LatencyTargets,
    SyntheticWorkloadConfig,
    WorkloadSpec,
    synthetic_workload,
)
from lego_embed.fleet.surrogate import Surrogate

TARGETS = LatencyTargets(ttft_ms={99: 1000.0}, itl_ms={99: 100.0})


def hot_workload() -> WorkloadSpec:
    adapters = (AdapterSpec("hot", 16, 40.0),
                *(AdapterSpec(f"cold{i}", 8, 0.2) for i in range(10)))
    return WorkloadSpec(name="hot", base_model="qwen-2.5-7b-instruct", adapters=adapters,
                        max_model_len=4096, targets=TARGETS)


def test_the_300_adapter_scenario_meets_its_ttft_target(
        shipped_calibration: Calibration, surrogate: Surrogate) -> None:
    workload = synthetic_workload("npc_300", SyntheticWorkloadConfig(
        n_adapters=300, total_rate_req_s=30.0, zipf_s=1.0, seed=0), targets=TARGETS)
    fleet = plan_fleet(workload, make_cluster(8), shipped_calibration, surrogate,
                       verify_duration_s=600.0)
    assert fleet.feasible, fleet.failures
    placed = sorted(a.adapter_id for g in fleet.plan.gpus for a in g.adapters)
    assert sorted(set(placed)) == sorted(a.adapter_id for a in workload.adapters)
    for result in fleet.plan.twin:
        assert result.latency_ms("ttft", 99) <= 1000.0 * 0.9
        assert result.latency_ms("itl", 99) <= 100.0 * 0.9
        assert result.throughput_to_ideal >= 0.92


def test_a_hot_adapter_gets_replicas_with_shares(shipped_calibration: Calibration,
                                                 surrogate: Surrogate) -> None:
    fleet = plan_fleet(hot_workload(), make_cluster(8), shipped_calibration, surrogate,
                       verify_duration_s=300.0)
    assert fleet.feasible, fleet.failures
    assert fleet.replicas["hot"] >= 2 and fleet.replicas["cold0"] == 1
    table = routes(fleet)
    assert len(table["hot"]) == fleet.replicas["hot"]
    assert len({instance for instance, _ in table["hot"]}) == fleet.replicas["hot"]
    assert sum(share for _, share in table["hot"]) == pytest.approx(1.0)
    assert all(sum(s for _, s in replicas) == pytest.approx(1.0) for replicas in table.values())


def test_a_plan_bigger_than_the_cluster_is_refused(shipped_calibration: Calibration,
                                                   surrogate: Surrogate) -> None:
    workload = replace(hot_workload(), adapters=(AdapterSpec("hot", 16, 500.0),))
    with pytest.raises(PlanInfeasibleError, match=r"at least \d+ GPUs .* has 2 h100-64gb: add"):
        plan_fleet(workload, make_cluster(2), shipped_calibration, surrogate, 300.0)
    thousandfold = synthetic_workload("x1000", SyntheticWorkloadConfig(
        n_adapters=300, total_rate_req_s=30000.0, seed=0), targets=TARGETS)
    with pytest.raises(PlanInfeasibleError, match="cluster test has 8"):
        plan_fleet(thousandfold, make_cluster(8), shipped_calibration, surrogate, 300.0)


def test_a_gpu_where_the_model_cannot_start_is_refused(shipped_calibration: Calibration,
                                                        surrogate: Surrogate) -> None:
    small = replace(shipped_calibration, gpu="t4-16gb",
                    memory=replace(shipped_calibration.memory, gpu_memory_gib=16.0))
    cluster = replace(make_cluster(8), gpu="t4-16gb")
    with pytest.raises(PlanInfeasibleError, match="refuses to start.*more memory"):
        plan_fleet(hot_workload(), cluster, small, surrogate, 300.0)


def test_a_target_no_gpu_can_meet_is_reported(shipped_calibration: Calibration,
                                              surrogate: Surrogate) -> None:
    workload = replace(hot_workload(), targets=LatencyTargets(ttft_ms={99: 5.0}))
    with pytest.raises(PlanInfeasibleError, match="even alone.*TTFT p99 .* target 5 ms"):
        plan_fleet(workload, make_cluster(8), shipped_calibration, surrogate, 300.0)


def test_inputs_the_calibration_does_not_cover_are_refused(shipped_calibration: Calibration,
                                                           surrogate: Surrogate) -> None:
    other_model = replace(hot_workload(), base_model="llama-3-70b")
    with pytest.raises(CalibrationError, match="calibrate that pair first"):
        plan_fleet(other_model, make_cluster(8), shipped_calibration, surrogate, 300.0)
    other_gpu = replace(make_cluster(8), gpu="a100-80gb")
    with pytest.raises(CalibrationError, match="a100-80gb"):
        plan_fleet(hot_workload(), other_gpu, shipped_calibration, surrogate, 300.0)
    big_rank = replace(hot_workload(), adapters=(AdapterSpec("huge", 600, 0.1),))
    with pytest.raises(WorkloadSpecError, match="adapter huge: rank 600: vLLM 0.8.5 serves"):
        plan_fleet(big_rank, make_cluster(8), shipped_calibration, surrogate, 300.0)
    too_long = replace(hot_workload(), max_model_len=65536)
    with pytest.raises(WorkloadSpecError, match="max_model_len 65536 exceeds"):
        plan_fleet(too_long, make_cluster(8), shipped_calibration, surrogate, 300.0)
