"""The GPU check's rehearsal: `tools/gpu_check.sh --dry-run` runs every step on the CPU with a
tiny model, as the GPU machine would run it: only the packages that machine has (the others
fail to import here) and no pytest plugins, so the real run cannot fail on a path, an import
or an argument. The co-location step needs the shared render traces (../shared/traces): without
them (nor the checkout's shared/traces) the rest is still rehearsed and the test skips, saying
so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ABSENT_ON_THE_GPU_MACHINE = (
    "transformers", "matplotlib", "sklearn", "scipy", "yaml", "tqdm", "pytest_benchmark",
    "pandas", "huggingface_hub",
)
TRACE_DIRS = (REPO_ROOT.parent / "shared" / "traces", REPO_ROOT / "shared" / "traces")
HAVE_TRACES = any(directory.is_dir() for directory in TRACE_DIRS)
POLICIES = {"off", "free", "inter_frame", "static_skip", "lego"}
BLOCKER = """
import sys

class AbsentOnTheGpuMachine:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {absent!r}:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
        return None

sys.meta_path.insert(0, AbsentOnTheGpuMachine())
"""


def test_dry_run_runs_every_step_with_the_gpu_machine_packages(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(absent=ABSENT_ON_THE_GPU_MACHINE))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(site),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([str(REPO_ROOT / "tools" / "gpu_check.sh"), "--dry-run", str(out)],
                          env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert (out / "gpu_check.json").is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    statuses = {name: step["status"] for name, step in report["steps"].items()}
    colocation = "ok" if HAVE_TRACES else "failed"
    assert statuses == {"cuda_tests": "ok", "peaks": "ok", "model": "ok", "subtasks": "ok",
                        "actions": "ok", "colocation": colocation}, report["steps"]
    assert done.returncode == (0 if HAVE_TRACES else 1), done.stdout[-3000:] + done.stderr[
        -3000:]
    tests = report["cuda_tests"]
    assert tests["failures"] == 0 and tests["errors"] == 0
    assert tests["tests"] - tests["skipped"] >= 5  # the comparisons ran, CPU against CPU
    kinds = {(row["kind"], row["phase"]) for row in report["subtasks"]}
    assert kinds == {("embed", "prefill"), ("attention", "prefill"), ("ffn", "prefill"),
                     ("head", "prefill"), ("layer", "decode"), ("head", "decode")}
    assert all(row["floor_us"] and row["median_us"] > 0 for row in report["subtasks"])
    assert [row["skipped_layers"] for row in report["actions"]] == [0, 1, 2, 3, 4]
    for predicted in report["predicted_gpu_run_s"].values():
        assert 0 < predicted["colocation"] < predicted["total"]
        assert predicted["total"] < 8 * 60  # the GPU run must fit the device's command limit
    if not HAVE_TRACES:
        assert "no trace folder" in report["steps"]["colocation"]["error"]
        pytest.skip(f"{TRACE_DIRS[0]} is absent: the co-location step was not rehearsed")
    check_colocation(report, json.loads((out / "colocation_gpu.json").read_text()))


def check_colocation(report: dict, result: dict) -> None:
    """The co-location step's rows: every run of the plan, every request answered, the row
    format of colocation_cpu.json, the policies of a setting back to back, and the skip levels
    each fixed policy must use."""
    plan = report["config"]["colocation"]
    runs = result["runs"]
    assert report["colocation"]["runs"] == len(runs)
    assert not result["skipped_runs"] and not result["failed_runs"]
    blocks = plan["repeats"] * len(plan["placements"]) * len(plan["traces"])
    assert len(runs) == blocks * (1 + len(plan["settings"]) * len(plan["policies"]))
    cpu = json.loads((REPO_ROOT / "docs" / "benchmarks" / "colocation_cpu.json").read_text())
    cpu_keys = {k for r in cpu["runs"] if r["section"] == "main" for k in r}
    assert cpu_keys <= set(next(r for r in runs if r["policy"] != "off"))
    frames = round(plan["seconds"] * 60)
    top = max(level["level"] for level in result["skip_levels"])
    for placement in plan["placements"]:
        mine = sorted((r for r in runs if r["placement"] == placement),
                      key=lambda r: r["position"])
        assert {r["policy"] for r in mine} == POLICIES
        assert all(r["frames"] == frames and r["fps"] > 0 for r in mine)
        for row in mine:
            llm = row["policy"] != "off"
            assert (row["requests"] > 0) == llm
            assert row["answered"] == row["requests"] and row["failed"] == 0
            levels = set(row["answers_by_skip_level"])
            if row["policy"] in ("free", "inter_frame"):
                assert levels <= {"0"}
            if row["policy"] == "static_skip":
                assert levels <= {str(top)}
        for apm, npcs in plan["settings"]:
            positions = [r["position"] for r in mine if (r["apm"], r["npcs"]) == (apm, npcs)]
            assert len(positions) == len(plan["policies"])
            assert max(positions) - min(positions) == len(positions) - 1  # back to back
    placements = {row["placement"] for row in result["rows"]}
    assert placements == set(plan["placements"])
    assert all(row["action_slo_attainment"] is not None
               for row in result["rows"] if row["policy"] != "off")
