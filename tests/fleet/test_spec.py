"""Workload files: valid ones load, bad ones are rejected with a message naming the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from lego_embed.errors import WorkloadSpecError
from lego_embed.fleet.spec import (
    LengthDistribution,
    SyntheticWorkloadConfig,
    load_workload,
    save_workload,
    synthetic_workload,
    workload_from_dict,
)


def _valid() -> dict:
    return {
        "name": "demo",
        "base_model": {"name": "qwen", "params_billion": 7.6, "num_layers": 28,
                       "hidden_size": 3584},
        "gpu": {"name": "h100", "memory_gib": 63.43},
        "adapters": [
            {"id": "guard", "rank": 8, "rate_req_s": 0.5},
            {"id": "merchant", "rank": 16, "rate_req_s": 0.1,
             "prompt_tokens": {"mean": 300, "std": 50}},
        ],
    }


def test_valid_workload_loads_and_round_trips(tmp_path: Path) -> None:
    spec = workload_from_dict(_valid())
    assert [a.adapter_id for a in spec.adapters] == ["guard", "merchant"]
    assert spec.adapters[1].prompt.mean_tokens == 300
    assert spec.total_rate_req_s == pytest.approx(0.6)
    path = tmp_path / "w.yaml"
    save_workload(spec, path)
    assert load_workload(path) == spec


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("base_model"), "missing field 'base_model'"),
        (lambda d: d["gpu"].pop("memory_gib"), "missing field 'memory_gib'"),
        (lambda d: d["adapters"][0].pop("rate_req_s"), "missing field 'rate_req_s'"),
        (lambda d: d["adapters"][0].update(rate_req_s=-1.0), "rate_req_s: must be greater"),
        (lambda d: d["adapters"][0].update(rate_req_s="fast"), "expected a number"),
        (lambda d: d["adapters"][1].update(rank=12), "rank: vLLM supports ranks"),
        (lambda d: d["adapters"][1].update(id="guard"), "duplicate adapter id"),
        (lambda d: d.update(adapters=[]), "non-empty list"),
        (lambda d: d["adapters"][0].update(prompt_tokens={"mean": 5000}), "must lie within"),
    ],
)
def test_bad_workloads_are_rejected_with_a_clear_message(mutate, message: str) -> None:
    data = _valid()
    mutate(data)
    with pytest.raises(WorkloadSpecError, match=message):
        workload_from_dict(data)


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


def test_synthetic_workload_is_deterministic_and_zipf_skewed() -> None:
    config = SyntheticWorkloadConfig(n_adapters=200, total_rate_req_s=20.0, zipf_s=1.0, seed=3)
    a = synthetic_workload("w", config)
    b = synthetic_workload("w", config)
    assert a == b
    rates = sorted((x.rate_req_s for x in a.adapters), reverse=True)
    assert sum(rates) == pytest.approx(20.0, rel=1e-3)
    assert rates[0] > 20 * rates[-1]
    assert {x.rank for x in a.adapters} <= {8, 16, 32}


def test_length_distribution_keeps_its_mean_after_clipping() -> None:
    dist = LengthDistribution(mean_tokens=222, std_tokens=230, min_tokens=4, max_tokens=1024)
    draws = dist.sample(np.random.default_rng(0), 50000)
    assert draws.min() >= 4 and draws.max() <= 1024
    assert abs(draws.mean() - 222) < 5
