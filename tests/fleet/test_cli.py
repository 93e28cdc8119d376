"""`lego-embed fleet ...` end to end on a small workload (real calibration, tiny surrogate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lego_embed.cli import main
from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.surrogate import DatasetConfig, generate_dataset

REPO = Path(__file__).resolve().parents[2]


def test_calibrate_plan_simulate(tmp_path: Path, components_path: Path,
                                 calibration: Calibration, capsys: pytest.CaptureFixture) -> None:
    cal_path = tmp_path / "cal.json"
    assert main(["fleet", "calibrate", str(components_path), "--out", str(cal_path)]) == 0
    data = tmp_path / "data.jsonl"
    generate_dataset(data, DatasetConfig(n_samples=20, duration_s=30.0, seed=9), calibration,
                     progress=False)
    surrogate = tmp_path / "surrogate.json"
    assert main(["fleet", "train", str(data), "--out", str(surrogate), "--max-depth", "5",
                 "--trees", "10"]) == 0
    plan_dir = tmp_path / "plan"
    workload = REPO / "docs" / "examples" / "fleet_workload.yaml"
    assert main(["fleet", "plan", str(workload), "--out", str(plan_dir), "--calibration",
                 str(cal_path), "--surrogate", str(surrogate), "--verify-duration", "120"]) == 0
    placement = json.loads((plan_dir / "placement.json").read_text())
    placed = sorted(x for g in placement["gpus"] for x in g["adapters"])
    assert placed == sorted(["guard_captain", "blacksmith", "innkeeper", "mage", "merchant",
                             "bard"])
    assert all(not g["twin"]["starved"] for g in placement["gpus"])
    commands = (plan_dir / "serve_commands.sh").read_text()
    assert commands.count("vllm serve") == placement["n_gpus"]
    assert main(["fleet", "simulate", str(plan_dir), "--calibration", str(cal_path),
                 "--duration", "60"]) == 0
    assert (plan_dir / "simulation.png").stat().st_size > 1000
    assert "starving" in capsys.readouterr().out


def test_bad_workload_gives_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase_model: {name: q}\n")
    assert main(["fleet", "plan", str(bad), "--out", str(tmp_path / "p")]) == 2
    assert "missing field" in capsys.readouterr().err
