"""Calibration from the real component file: the memory, step and loading models it fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lego_embed.errors import CalibrationError
from lego_embed.fleet.calibration import (
    Calibration,
    calibrate,
    calibration_file_name,
    find_calibration,
    load_calibration,
)


def test_memory_model_reproduces_the_measured_kv_capacity(components_path: Path,
                                                          calibration: Calibration) -> None:
    table = json.loads(components_path.read_text())["gpu_memory_vs_adapter_slots"]
    rows = [dict(zip(table["columns"], r, strict=True)) for r in table["rows"]]
    for row in rows:
        fits = calibration.memory.fits(row["max_loras"], row["max_lora_rank"])
        assert fits == (row["status"] == "ok"), row
        if row["status"] == "ok":
            predicted = calibration.memory.kv_cache_tokens(row["max_loras"], row["max_lora_rank"])
            assert abs(predicted - row["kv_cache_tokens"]) < 0.05 * 700_000, row


def test_step_and_loading_models_are_physical(calibration: Calibration) -> None:
    step = calibration.step
    assert 5.0 < step.c0_ms < 20.0
    assert 0.01 < step.c_token_ms < 0.1
    assert list(step.lora_u_points) == sorted(step.lora_u_points)
    assert step.lora_u_ms[-1] > step.lora_u_ms[0] > 0
    assert calibration.loading.disk_ms(32) > calibration.loading.disk_ms(8) > 0
    assert 1.0 < calibration.loading.cpu_to_gpu_ms(16) < 10.0


def test_a_bigger_gpu_gets_more_kv_cache(calibration: Calibration) -> None:
    small = calibration.memory.kv_cache_tokens(64, 16)
    big = calibration.memory.kv_cache_tokens(64, 16, gpu_memory_gib=80.0)
    assert big > small
    assert not calibration.memory.fits(320, 32)
    assert calibration.memory.fits(320, 32, gpu_memory_gib=141.0)


def test_save_and_load_round_trip(tmp_path: Path, calibration: Calibration) -> None:
    path = tmp_path / "cal.json"
    calibration.save(path)
    assert load_calibration(path) == calibration
    assert (calibration.model, calibration.gpu, calibration.vllm_version,
            calibration.hf_model_id) == ("qwen-2.5-7b-instruct", "h100-64gb", "0.8.5",
                                         "Qwen/Qwen2.5-7B-Instruct")


def test_a_file_from_before_the_slot_prefill_weight_keeps_its_model(tmp_path: Path) -> None:
    """A calibration saved before `lora_slot_prefill_factor` existed loads with that weight equal
    to its `prefill_token_factor`, the one prefill weight its twin used."""
    from lego_embed.cli.fleet_commands import DEFAULT_CALIBRATION

    data = json.loads(DEFAULT_CALIBRATION.read_text())
    del data["corrections"]["lora_slot_prefill_factor"]
    data["corrections"]["prefill_token_factor"] = 0.35
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    assert load_calibration(path).corrections.lora_slot_prefill_factor == 0.35


def test_a_model_or_gpu_without_calibration_is_refused(tmp_path: Path,
                                                       calibration: Calibration) -> None:
    calibration.save(tmp_path / calibration_file_name(calibration.model, calibration.gpu))
    assert find_calibration("qwen-2.5-7b-instruct", "h100-64gb", [tmp_path]).is_file()
    for model, gpu in (("llama-3-70b", "h100-64gb"), ("qwen-2.5-7b-instruct", "t4-16gb")):
        with pytest.raises(CalibrationError, match="calibrate it first with `lego-embed fleet "
                                                   "calibrate") as error:
            find_calibration(model, gpu, [tmp_path])
        assert model in str(error.value) and gpu in str(error.value)
        assert "qwen-2.5-7b-instruct on h100-64gb" in str(error.value)


def test_malformed_component_files_are_rejected(tmp_path: Path, components_path: Path) -> None:
    with pytest.raises(CalibrationError, match="does not exist"):
        calibrate(tmp_path / "missing.json")
    data = json.loads(components_path.read_text())
    del data["adapter_loading_time"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="adapter_loading_time"):
        calibrate(broken)
    data = json.loads(components_path.read_text())
    data["step_latency_benchmarks"]["columns"].remove("mean_itl_ms")
    broken.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="mean_itl_ms"):
        calibrate(broken)
    bad_calibration = tmp_path / "cal.json"
    bad_calibration.write_text("{}")
    with pytest.raises(CalibrationError, match="malformed"):
        load_calibration(bad_calibration)
