"""`lego-embed fleet ...` end to end: calibrate, generate a workload, plan on a cluster, replay
(placement.json and simulation.json agree), re-plan with a diff, and honest exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lego_embed.cli import main
from lego_embed.cli.fleet_commands import DEFAULT_CALIBRATION, EXIT_INFEASIBLE

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "docs" / "examples"


def close_to(value: Any) -> Any:
    """`value` with every float replaced by pytest.approx of it: a fit's last digits depend on
    the machine's floating-point library."""
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-9, abs=1e-15)
    if isinstance(value, dict):
        return {key: close_to(item) for key, item in value.items()}
    if isinstance(value, list):
        return [close_to(item) for item in value]
    return value


def test_calibrate_writes_the_shipped_calibration(tmp_path: Path, components_path: Path) -> None:
    assert main(["fleet", "calibrate", str(components_path), "--gpu", "h100-64gb",
                 "--out", str(tmp_path)]) == 0
    written = tmp_path / "qwen-2.5-7b-instruct__h100-64gb.calibration.json"
    assert json.loads(written.read_text()) == close_to(
        json.loads(DEFAULT_CALIBRATION.read_text()) | {"source": str(components_path)})


def test_plan_simulate_replan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plan_dir = tmp_path / "plan"
    cluster = EXAMPLES / "fleet_cluster.yaml"
    assert main(["fleet", "plan", str(EXAMPLES / "fleet_workload.yaml"), "--cluster",
                 str(cluster), "--out", str(plan_dir), "--verify-duration", "300"]) == 0
    placement = json.loads((plan_dir / "placement.json").read_text())
    assert placement["feasible"] and placement["vllm_version"] == "0.8.5"
    assert placement["latency_targets"] == {"ttft_ms": {"p99": 1000.0}, "itl_ms": {"p99": 100.0}}
    placed = sorted({a["id"] for i in placement["instances"] for a in i["adapters"]})
    assert placed == sorted(["guard_captain", "blacksmith", "innkeeper", "mage", "merchant",
                             "bard"])
    planned = [i["twin"] for i in placement["instances"]]
    assert json.loads((plan_dir / "simulation.json").read_text()) == planned
    assert main(["fleet", "simulate", str(plan_dir)]) == 0
    assert json.loads((plan_dir / "simulation.json").read_text()) == planned
    assert (plan_dir / "simulation.png").stat().st_size > 1000
    assert "0 missing the criterion" in capsys.readouterr().out

    workload = yaml.safe_load((EXAMPLES / "fleet_workload.yaml").read_text())
    workload["adapters"].append({"id": "new_npc", "rank": 8, "rate_req_s": 0.2})
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(workload))
    replan_dir = tmp_path / "replan"
    assert main(["fleet", "plan", str(changed), "--cluster", str(cluster), "--out",
                 str(replan_dir), "--previous", str(plan_dir), "--verify-duration", "300"]) == 0
    diff = json.loads((replan_dir / "diff.json").read_text())
    assert diff["added"] and "new_npc" in diff["added"] and diff["moved_adapters"] == 0
    calls = json.loads((replan_dir / "lora_calls.json").read_text())
    assert [c["body"]["lora_name"] for c in calls] == ["new_npc"]
    script = (replan_dir / "apply_replan.sh").read_text()
    assert script.index("load_lora_adapter") < script.index("deploy/router.yaml")
    assert "re-plan: 0 of 6 adapters moved" in capsys.readouterr().out


def test_workload_generator_writes_a_plannable_file(tmp_path: Path) -> None:
    out = tmp_path / "w.yaml"
    assert main(["fleet", "workload", "--adapters", "50", "--total-rate", "5", "--ttft-p99-ms",
                 "1500", "--out", str(out)]) == 0
    data = yaml.safe_load(out.read_text())
    assert len(data["adapters"]) == 50 and data["latency_targets"]["ttft_ms"] == {"p99": 1500.0}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda w, c: w.update(default={"prompt_tokens": {"mean": 100}}),
         "unknown key 'default'"),
        (lambda w, c: w.update(base_model="llama-3-70b"),
         "no calibration for base model 'llama-3-70b'.*calibrate it first"),
        (lambda w, c: c.update(gpu="t4-16gb"),
         "on GPU 't4-16gb'.*calibrate it first with `lego-embed fleet calibrate"),
        (lambda w, c: w["adapters"][0].update(rank=1024), "rank 1024: vLLM 0.8.5 serves"),
        (lambda w, c: w.update(max_model_len=100000), "max_model_len 100000 exceeds"),
    ],
)
def test_bad_inputs_exit_2_naming_what_to_fix(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              edit, message: str) -> None:
    workload = yaml.safe_load((EXAMPLES / "fleet_workload.yaml").read_text())
    cluster = yaml.safe_load((EXAMPLES / "fleet_cluster.yaml").read_text())
    edit(workload, cluster)
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(workload))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cluster))
    code = main(["fleet", "plan", str(tmp_path / "w.yaml"), "--cluster",
                 str(tmp_path / "c.yaml"), "--out", str(tmp_path / "p")])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_an_infeasible_plan_exits_3_with_what_to_change(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    workload = yaml.safe_load((EXAMPLES / "fleet_workload.yaml").read_text())
    workload["adapters"] = [{"id": "crowd", "rank": 8, "rate_req_s": 500.0}]
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(workload))
    code = main(["fleet", "plan", str(tmp_path / "w.yaml"), "--cluster",
                 str(EXAMPLES / "fleet_cluster.yaml"), "--out", str(tmp_path / "p"),
                 "--verify-duration", "300"])
    err = capsys.readouterr().err
    assert code == EXIT_INFEASIBLE
    assert "cluster studio_eu has 16 h100-64gb" in err and "add nodes" in err
    workload["adapters"] = [{"id": f"npc{i}", "rank": 8, "rate_req_s": 0.05} for i in range(300)]
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(workload))
    small = yaml.safe_load((EXAMPLES / "fleet_cluster.yaml").read_text())
    small["nodes"] = [{"name": "only-node", "gpus": 1}]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(small))
    code = main(["fleet", "plan", str(tmp_path / "w.yaml"), "--cluster", str(tmp_path / "c.yaml"),
                 "--out", str(tmp_path / "p2"), "--verify-duration", "300"])
    err = capsys.readouterr().err
    assert code == EXIT_INFEASIBLE
    assert "has 1 h100-64gb" in err and "add nodes" in err
    placement = json.loads((tmp_path / "p2" / "placement.json").read_text())
    assert not placement["feasible"] and not (tmp_path / "p2" / "deploy").exists()
