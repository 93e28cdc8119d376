"""Stable re-plans: small rate changes move few adapters, the diff and the runtime LoRA calls
say exactly what changes, and running instances keep their flags."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from fleet_helpers import make_cluster

from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.deploy import service_url
from lego_embed.fleet.planner import FleetPlan, plan_fleet
from lego_embed.fleet.replan import RunningGpu, replan_fleet, runtime_lora_calls
from lego_embed.fleet.spec import (
    AdapterSpec,
    LatencyTargets,
    SyntheticWorkloadConfig,
    WorkloadSpec,
    synthetic_workload,
)
from lego_embed.fleet.surrogate import Surrogate

TARGETS = LatencyTargets(ttft_ms={99: 1000.0}, itl_ms={99: 100.0})


def running(fleet: FleetPlan) -> list[RunningGpu]:
    return [RunningGpu(g.name, g.node, g.max_loras, g.max_lora_rank, g.max_cpu_loras,
                       tuple(a.adapter_id for a in g.adapters),
                       tuple(a.rate_req_s for a in g.adapters)) for g in fleet.plan.gpus]


@pytest.fixture(scope="module")
def first(shipped_calibration: Calibration, surrogate: Surrogate) -> FleetPlan:
    workload = synthetic_workload("npc_120", SyntheticWorkloadConfig(
        n_adapters=120, total_rate_req_s=20.0, zipf_s=1.0, seed=5), targets=TARGETS)
    fleet = plan_fleet(workload, make_cluster(8), shipped_calibration, surrogate, 600.0)
    assert fleet.feasible, fleet.failures
    return fleet


def test_a_ten_percent_rate_change_moves_under_five_percent(
        first: FleetPlan, shipped_calibration: Calibration, surrogate: Surrogate) -> None:
    factors = np.random.default_rng(7).uniform(0.9, 1.1, len(first.workload.adapters))
    changed = replace(first.workload, adapters=tuple(
        replace(a, rate_req_s=a.rate_req_s * f)
        for a, f in zip(first.workload.adapters, factors, strict=True)))
    fleet, diff = replan_fleet(changed, first.cluster, shipped_calibration, surrogate,
                               running(first), 600.0)
    assert fleet.feasible, fleet.failures
    assert diff.kept_adapters == 120
    assert diff.moved_fraction < 0.05
    assert not diff.restarted and not diff.added and not diff.removed
    kept = {g.name for g in first.plan.gpus} & {g.name for g in fleet.plan.gpus}
    assert len(kept) >= first.plan.n_gpus - 1
    calls = runtime_lora_calls(diff, fleet, lambda i: service_url(i, "npc-test"))
    assert len([c for c in calls if c["phase"] == "load"]) >= len(
        [m for m, (old, new) in diff.moved.items() if set(new) - set(old) - set(diff.started)])


def test_added_and_removed_adapters_become_load_and_unload_calls(
        first: FleetPlan, shipped_calibration: Calibration, surrogate: Surrogate) -> None:
    gone = first.workload.adapters[-1].adapter_id
    newcomer = AdapterSpec("newcomer", 16, 0.05)
    changed: WorkloadSpec = replace(first.workload,
                                    adapters=(*first.workload.adapters[:-1], newcomer))
    fleet, diff = replan_fleet(changed, first.cluster, shipped_calibration, surrogate,
                               running(first), 600.0)
    assert list(diff.added) == ["newcomer"] and list(diff.removed) == [gone]
    assert not diff.started and not diff.restarted
    calls = runtime_lora_calls(diff, fleet, lambda i: service_url(i, "npc-test"))
    load = [c for c in calls if c["body"]["lora_name"] == "newcomer"]
    unload = [c for c in calls if c["body"]["lora_name"] == gone]
    assert len(load) == 1 and load[0]["url"].endswith("/v1/load_lora_adapter")
    assert load[0]["body"]["lora_path"] == "/adapters/newcomer"
    assert len(unload) == 1 and unload[0]["url"].endswith("/v1/unload_lora_adapter")
    assert calls.index(load[0]) < calls.index(unload[0])
    host = next(g for g in fleet.plan.gpus if any(a.adapter_id == "newcomer" for a in g.adapters))
    before = next(g for g in first.plan.gpus if g.name == host.name)
    assert (host.max_loras, host.max_lora_rank) == (before.max_loras, before.max_lora_rank)
