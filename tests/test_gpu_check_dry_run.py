"""The GPU check's rehearsal: `tools/gpu_check.sh --dry-run` runs every step on the CPU with a
tiny model, as the GPU machine would run it: only the packages that machine has (the others
fail to import here) and no pytest plugins, so the real run cannot fail on a path, an import
or an argument."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ABSENT_ON_THE_GPU_MACHINE = (
    "transformers", "matplotlib", "sklearn", "scipy", "yaml", "tqdm", "pytest_benchmark",
    "pandas", "huggingface_hub",
)
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
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    assert {name: step["status"] for name, step in report["steps"].items()} == {
        "cuda_tests": "ok", "peaks": "ok", "model": "ok", "subtasks": "ok", "actions": "ok"}
    tests = report["cuda_tests"]
    assert tests["failures"] == 0 and tests["errors"] == 0
    assert tests["tests"] - tests["skipped"] >= 5  # the comparisons ran, CPU against CPU
    kinds = {(row["kind"], row["phase"]) for row in report["subtasks"]}
    assert kinds == {("embed", "prefill"), ("attention", "prefill"), ("ffn", "prefill"),
                     ("head", "prefill"), ("layer", "decode"), ("head", "decode")}
    assert all(row["floor_us"] and row["median_us"] > 0 for row in report["subtasks"])
    assert [row["skipped_layers"] for row in report["actions"]] == [0, 1, 2, 3, 4]
    predicted = report["predicted_gpu_run_s"]["H100"]
    assert 0 < predicted["total"] < 8 * 60  # the GPU run must fit the device's command limit
