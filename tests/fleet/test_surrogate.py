"""Surrogate: resumable dataset generation, deterministic training, tiny fast trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lego_embed.errors import CalibrationError
from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.spec import AdapterSpec
from lego_embed.fleet.surrogate import (
    FEATURES,
    LATENCY_KEYS,
    DatasetConfig,
    Surrogate,
    generate_dataset,
    instance_features,
    smape,
    train_surrogate,
)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, calibration: Calibration) -> Path:
    path = tmp_path_factory.mktemp("ds") / "data.jsonl"
    generate_dataset(path, DatasetConfig(n_samples=20, duration_s=30.0, seed=5), calibration,
                     progress=False)
    return path


def test_dataset_generation_is_resumable(tmp_path: Path, tiny_dataset: Path,
                                         calibration: Calibration) -> None:
    partial = tmp_path / "partial.jsonl"
    lines = tiny_dataset.read_text().splitlines()
    partial.write_text("\n".join(lines[:7]) + "\n")
    n = generate_dataset(partial, DatasetConfig(n_samples=20, duration_s=30.0, seed=5),
                         calibration, progress=False)
    assert n == 20
    resumed = sorted(json.loads(x)["index"] for x in partial.read_text().splitlines())
    assert resumed == list(range(20))
    by_index = {json.loads(x)["index"]: x for x in partial.read_text().splitlines()}
    assert [by_index[i] for i in range(20)] == sorted(lines, key=lambda x: json.loads(x)["index"])


def test_training_is_deterministic_and_trees_are_small(tmp_path: Path,
                                                      tiny_dataset: Path) -> None:
    a = train_surrogate(tiny_dataset, max_depth=6, n_trees=10)
    b = train_surrogate(tiny_dataset, max_depth=6, n_trees=10)
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    data_a = json.loads((tmp_path / "a.json").read_text())
    data_b = json.loads((tmp_path / "b.json").read_text())
    assert data_a["throughput_tree"] == data_b["throughput_tree"]
    assert data_a["starvation_tree"] == data_b["starvation_tree"]
    assert data_a["latency_trees"] == data_b["latency_trees"]
    assert a.throughput_tree.depth <= 6 and a.starvation_tree.depth <= 6
    assert all(t.depth <= 6 for t in a.latency_trees.values())
    loaded = Surrogate.load(tmp_path / "a.json")
    x = np.ones(len(FEATURES))
    assert loaded.predict_features(x) == a.predict_features(x)
    assert set(a.predict_features(x).latency_ms) == set(LATENCY_KEYS)


def test_prediction_of_infeasible_memory_is_starvation(tiny_dataset: Path,
                                                       calibration: Calibration) -> None:
    surrogate = train_surrogate(tiny_dataset, max_depth=4, n_trees=10)
    adapters = [AdapterSpec(f"a{i}", 32, 0.1) for i in range(4)]
    assert surrogate.predict(adapters, 320, calibration).starved
    x = instance_features(adapters, 16, calibration)
    assert x.shape == (len(FEATURES),)
    assert x[FEATURES.index("offered_req_s")] == pytest.approx(0.4)


def test_smape_and_bad_files(tmp_path: Path) -> None:
    assert smape(np.array([100.0, 50.0]), np.array([100.0, 50.0])) == 0.0
    assert smape(np.array([100.0]), np.array([300.0])) == pytest.approx(1.0)
    with pytest.raises(CalibrationError, match="does not exist"):
        Surrogate.load(tmp_path / "none.json")
    short = tmp_path / "short.jsonl"
    short.write_text("")
    with pytest.raises(CalibrationError, match="at least 20"):
        train_surrogate(short)


def test_the_shipped_surrogate_predicts_latency_that_grows_with_load(
        surrogate: Surrogate, shipped_calibration: Calibration) -> None:
    light = [AdapterSpec(f"a{i}", 16, 0.05) for i in range(16)]
    busy = [AdapterSpec(f"a{i}", 16, 1.0) for i in range(16)]
    a = surrogate.predict(light, 16, shipped_calibration)
    b = surrogate.predict(busy, 16, shipped_calibration)
    assert b.latency_ms[("itl", 50)] > a.latency_ms[("itl", 50)]
    assert b.latency_ms[("ttft", 99)] >= a.latency_ms[("ttft", 99)]
    assert not a.starved
    assert surrogate.metrics["ttft_p99_smape"] < 1.0
