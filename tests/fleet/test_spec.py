"""Workload and cluster files: valid ones load, bad ones (unknown keys included) are rejected with
a message naming the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from lego_embed.errors import WorkloadSpecError
from lego_embed.fleet.spec import (
    LengthDistribution,
    SyntheticWorkloadConfig,
    cluster_from_dict,
    load_cluster,
    load_workload,
    save_workload,
    synthetic_workload,
    workload_from_dict,
)

REPO = Path(__file__).resolve().parents[2]


def _valid() -> dict:
    return {
        "name": "demo",
        "base_model": "qwen-2.5-7b-instruct",
        "max_model_len": 4096,
        "latency_targets": {"ttft_ms": {"p99": 2000}, "itl_ms": {"p50": 40, "p99": 150}},
        "adapters": [
            {"id": "guard", "rank": 8, "rate_req_s": 0.5},
            {"id": "merchant", "rank": 16, "rate_req_s": 0.1,
             "prompt_tokens": {"mean": 300, "std": 50}},
        ],
    }


def _cluster() -> dict:
    return {"name": "studio", "gpu": "h100-64gb", "namespace": "npc-llm",
            "nodes": [{"name": "gpu-a", "gpus": 8}, {"name": "gpu-b", "gpus": 4}],
            "adapter_storage": {"kind": "pvc", "claim_name": "npc-adapters",
                                "mount_path": "/adapters"}}


def test_valid_workload_loads_and_round_trips(tmp_path: Path) -> None:
    spec = workload_from_dict(_valid())
    assert [a.adapter_id for a in spec.adapters] == ["guard", "merchant"]
    assert spec.adapters[1].prompt.mean_tokens == 300
    assert spec.total_rate_req_s == pytest.approx(0.6)
    assert spec.max_model_len == 4096
    assert spec.targets.items() == [("ttft", 99, 2000.0), ("itl", 50, 40.0), ("itl", 99, 150.0)]
    path = tmp_path / "w.yaml"
    save_workload(spec, path)
    assert load_workload(path) == spec


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("base_model"), "missing field 'base_model'"),
        (lambda d: d.update(base_model={"name": "q", "params_billion": 70}),
         "base model's name as a string"),
        (lambda d: d.update(default={"prompt_tokens": {"mean": 10}}),
         "unknown key 'default'.*did you mean 'defaults'"),
        (lambda d: d["adapters"][0].update(rate=1.0), r"adapters\[0\]: unknown key 'rate'"),
        (lambda d: d["adapters"][1]["prompt_tokens"].update(avg=3), "unknown key 'avg'"),
        (lambda d: d["latency_targets"]["ttft_ms"].update(p98=10), "unknown key 'p98'"),
        (lambda d: d["latency_targets"].update(e2e_ms={}), "unknown key 'e2e_ms'"),
        (lambda d: d["latency_targets"]["itl_ms"].update(p50=-1), "must be greater than zero"),
        (lambda d: d.update(max_model_len=0), "max_model_len: expected a positive integer"),
        (lambda d: d.update(max_model_len=1024), "exceed max_model_len 1024"),
        (lambda d: d["adapters"][0].pop("rate_req_s"), "missing field 'rate_req_s'"),
        (lambda d: d["adapters"][0].update(rate_req_s=-1.0), "rate_req_s: must be greater"),
        (lambda d: d["adapters"][0].update(rate_req_s="fast"), "expected a number"),
        (lambda d: d["adapters"][1].update(rank=0), "rank: expected a positive integer"),
        (lambda d: d["adapters"][1].update(id="guard"), "duplicate adapter id"),
        (lambda d: d["adapters"][1].update(id="a b/c"), "ids are file and model names"),
        (lambda d: d.update(adapters=[]), "non-empty list"),
        (lambda d: d["adapters"][0].update(prompt_tokens={"mean": 5000}), "must lie within"),
    ],
)
def test_bad_workloads_are_rejected_with_a_clear_message(mutate, message: str) -> None:
    data = _valid()
    mutate(data)
    with pytest.raises(WorkloadSpecError, match=message):
        workload_from_dict(data)


def test_cluster_loads_and_bad_clusters_name_the_field() -> None:
    cluster = cluster_from_dict(_cluster())
    assert cluster.total_gpus == 12
    assert cluster.gpu_slots()[8] == ("gpu-b", 0)
    assert cluster.adapter_storage.mount_path == "/adapters"
    for mutate, message in [
        (lambda d: d.update(gpus_per_node=8), "unknown key 'gpus_per_node'"),
        (lambda d: d.update(gpu={"name": "h100", "memory_gib": 16}), "GPU type's name"),
        (lambda d: d["nodes"][0].update(gpus=0), "positive integer"),
        (lambda d: d["nodes"].append({"name": "gpu-a", "gpus": 1}), "must be unique"),
        (lambda d: d.update(namespace="NPC_LLM"), "not a Kubernetes name"),
        (lambda d: d["adapter_storage"].update(kind="s3"), "one of pvc, host_path, nfs"),
        (lambda d: d["adapter_storage"].update(mount_path="adapters"), "absolute path"),
        (lambda d: d["adapter_storage"].update(host_path="/x"), "does not apply to kind pvc"),
        (lambda d: d["adapter_storage"].pop("claim_name"), "missing field 'claim_name'"),
    ]:
        data = _cluster()
        mutate(data)
        with pytest.raises(WorkloadSpecError, match=message):
            cluster_from_dict(data)


def test_the_shipped_examples_are_valid() -> None:
    workload = load_workload(REPO / "docs" / "examples" / "fleet_workload.yaml")
    cluster = load_cluster(REPO / "docs" / "examples" / "fleet_cluster.yaml")
    assert workload.targets and cluster.total_gpus >= 1


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(WorkloadSpecError, match="does not exist"):
        load_workload(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("adapters: [1, 2\n")
    with pytest.raises(WorkloadSpecError, match="not valid YAML"):
        load_workload(bad)
    top = tmp_path / "list.yaml"
    top.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(WorkloadSpecError, match="mapping at the top level"):
        load_workload(top)
    with pytest.raises(WorkloadSpecError, match="mapping at the top level"):
        load_cluster(top)


def test_synthetic_workload_is_deterministic_and_zipf_skewed() -> None:
    config = SyntheticWorkloadConfig(n_adapters=200, total_rate_req_s=20.0, zipf_s=1.0, seed=3)
    a = synthetic_workload("w", config)
    b = synthetic_workload("w", config)
    assert a == b
    rates = sorted((x.rate_req_s for x in a.adapters), reverse=True)
    assert sum(rates) == pytest.approx(20.0, rel=1e-3)
    assert rates[0] > 20 * rates[-1]
    assert {x.rank for x in a.adapters} <= {8, 16, 32}
    assert workload_from_dict(a.to_dict()) == a


def test_length_distribution_keeps_its_mean_after_clipping() -> None:
    dist = LengthDistribution(mean_tokens=222, std_tokens=230, min_tokens=4, max_tokens=1024)
    draws = dist.sample(np.random.default_rng(0), 50000)
    assert draws.min() >= 4 and draws.max() <= 1024
    assert abs(draws.mean() - 222) < 5
