"""The prepared GPU check: everything worth measuring on a lent GPU, in one rehearsed run.

Run it with `tools/gpu_check.sh [OUT]` on the GPU machine (no network, its own Python and torch;
only torch, numpy, safetensors, tokenizers, pytest and nvidia-ml-py are imported) and with
`tools/gpu_check.sh --dry-run OUT` anywhere: the same steps on the CPU with a tiny model, in
seconds (`make test` runs it, so the GPU run cannot fail on a path, an import or an argument).

Steps, each timed, each failure recorded with its traceback while the next step still runs,
and none started once the time budget is spent:

1. `cuda_tests`: `pytest -m cuda tests/cuda` (executor on CUDA vs CPU, stream priority, event
   timing, NVML, the runtime on CUDA); a dry run runs the comparisons CPU against CPU and skips
   what needs a GPU.
2. `peaks`: datasheet and measured matmul FLOP/s and copy bandwidth.
3. `model`: Llama-3-8B shape (bf16) with random weights made on the device.
4. `subtasks`: every subtask kind at the prompt lengths and decode contexts of the config,
   against its roofline floor.
5. `actions`: one LEGO action (512-token prompt, 16 free tokens) at 0/4/8/12/16 skipped
   layers (random adaptors: timing only).

Output: OUT/gpu_check.json (device before and after, software, config, step status and seconds,
each step's result under its name, and for a dry run the predicted length of the GPU run) and
the CUDA tests' own output files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lego_embed.bench.device_record import device_record, measured_peaks, software_record
from lego_embed.bench.gpu_profile import profile_subtasks, time_actions
from lego_embed.bench.roofline import DevicePeaks, Work, subtask_work
from lego_embed.bench.synthetic import llama3_8b_args, skip_plans, synthetic_model, tiny_args
from lego_embed.model.config import ModelArgs
from lego_embed.model.subtask import DECODE, PREFILL, Subtask, SubtaskKind

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks" / "gpu"
# What one subtask costs beyond its work on a GPU (launch, CUDA-event sync, Python), and the
# share of the roofline a run reaches: the prediction's two assumptions.
ASSUMED_OVERHEAD_S = 60e-6
ASSUMED_EFFICIENCY = 0.4
FIXED_COSTS_S = {"interpreter_and_imports": 15.0, "cuda_tests": 90.0, "peaks": 5.0}


@dataclass(frozen=True)
class CheckConfig:
    """Sizes and repetitions of one run of the check. model: "llama3_8b" or "tiny";
    prompt_lengths / decode_contexts in tokens; action_* the LEGO action's prompt and free
    output tokens; matmul_size (elements per side) and copy_bytes size the peak measurements;
    budget_s: no step starts after this many seconds."""

    model: str
    dtype: str
    prompt_lengths: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    action_prompt_tokens: int
    action_new_tokens: int
    profile_warmup: int
    profile_repeats: int
    action_warmup: int
    action_repeats: int
    matmul_size: int
    copy_bytes: int
    budget_s: float

    def model_args(self) -> ModelArgs:
        return llama3_8b_args() if self.model == "llama3_8b" else tiny_args()

    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


GPU_CONFIG = CheckConfig(
    model="llama3_8b", dtype="bfloat16", prompt_lengths=(128, 256, 512),
    decode_contexts=(512, 516, 520, 524, 528), action_prompt_tokens=512, action_new_tokens=16,
    profile_warmup=3, profile_repeats=20, action_warmup=2, action_repeats=10,
    matmul_size=8192, copy_bytes=2**32, budget_s=420.0,
)
DRY_RUN_CONFIG = CheckConfig(
    model="tiny", dtype="bfloat16", prompt_lengths=(16, 32), decode_contexts=(32, 34, 36),
    action_prompt_tokens=32, action_new_tokens=4, profile_warmup=1, profile_repeats=2,
    action_warmup=1, action_repeats=2, matmul_size=256, copy_bytes=2**22, budget_s=300.0,
)


@dataclass
class CheckRun:
    """The state the steps share: where results go, the device, the config and what earlier
    steps made (the model, the peaks)."""

    out: Path
    device: torch.device
    config: CheckConfig
    python: str
    results: dict[str, Any] = field(default_factory=dict)
    peaks: list[DevicePeaks] = field(default_factory=list)
    loaded: Any = None


def step_cuda_tests(run: CheckRun) -> dict[str, Any]:
    junit = run.out / "cuda_tests.xml"
    command = [run.python, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
               "-m", "cuda", "tests/cuda", f"--junitxml={junit}", "-rs"]
    env = {**os.environ, "LEGO_CUDA_TESTS_DEVICE": run.device.type}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          check=False)
    (run.out / "cuda_tests.txt").write_text(done.stdout + done.stderr)
    suite = ElementTree.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    if done.returncode != 0:
        raise RuntimeError(f"CUDA tests failed (exit {done.returncode}): {counts}; see "
                           "cuda_tests.txt")
    return counts


def step_peaks(run: CheckRun) -> list[dict[str, Any]]:
    config = run.config
    datasheet = DevicePeaks.datasheet(device_record(run.device)["name"])
    measured = measured_peaks(run.device, config.torch_dtype(), config.matmul_size,
                              config.copy_bytes)
    run.peaks = [p for p in (datasheet, measured) if p is not None]
    return [asdict(p) for p in run.peaks]


def step_model(run: CheckRun) -> dict[str, Any]:
    run.loaded = synthetic_model(run.config.model_args(), run.device, run.config.torch_dtype())
    parameters = sum(p.numel() for p in run.loaded.model.parameters())
    return {"shape": run.config.model, "parameters": parameters,
            "weight_bytes": sum(p.numel() * p.element_size()
                                for p in run.loaded.model.parameters())}


def step_subtasks(run: CheckRun) -> list[dict[str, Any]]:
    config = run.config
    return profile_subtasks(run.loaded, config.prompt_lengths, config.decode_contexts,
                            run.peaks, config.profile_warmup, config.profile_repeats)


def step_actions(run: CheckRun) -> list[dict[str, Any]]:
    config = run.config
    return time_actions(run.loaded, skip_plans(run.loaded), config.action_prompt_tokens,
                        config.action_new_tokens, run.peaks, config.action_warmup,
                        config.action_repeats)


STEPS: tuple[tuple[str, Callable[[CheckRun], Any]], ...] = (
    ("cuda_tests", step_cuda_tests),
    ("peaks", step_peaks),
    ("model", step_model),
    ("subtasks", step_subtasks),
    ("actions", step_actions),
)


def _pass_subtasks(args: ModelArgs, tokens: int, context: int, phase: str) -> list[Subtask]:
    """The subtasks of one full-model pass (a one-chunk prefill or one decode step)."""
    if phase == PREFILL:
        middle = [Subtask(kind, phase, i, i, tokens, context) for i in range(args.num_layers)
                  for kind in (SubtaskKind.ATTENTION, SubtaskKind.FFN)]
        return [Subtask(SubtaskKind.EMBED, phase, -1, -1, tokens, context), *middle,
                Subtask(SubtaskKind.HEAD, phase, -1, -1, 1, context)]
    return [*(Subtask(SubtaskKind.LAYER, phase, i, i, 1, context)
              for i in range(args.num_layers)),
            Subtask(SubtaskKind.HEAD, phase, -1, -1, 1, context)]


def _predicted_pass_s(args: ModelArgs, subtasks: list[Subtask], peaks: DevicePeaks) -> float:
    work = Work(0.0, 0.0)
    for subtask in subtasks:
        work += subtask_work(args, subtask, 2)
    return peaks.floor_us(work) / 1e6 / ASSUMED_EFFICIENCY + len(subtasks) * ASSUMED_OVERHEAD_S


def predict_gpu_seconds(config: CheckConfig, peaks: DevicePeaks) -> dict[str, float]:
    """Expected seconds of each step of a run of `config` on a GPU with `peaks`, from the
    subtasks it runs, ASSUMED_EFFICIENCY of the roofline and ASSUMED_OVERHEAD_S per subtask."""
    args = config.model_args()
    runs = config.profile_warmup + config.profile_repeats
    prefill = sum(_predicted_pass_s(args, _pass_subtasks(args, n, n, PREFILL), peaks)
                  for n in config.prompt_lengths)
    decode = sum(
        _predicted_pass_s(args, _pass_subtasks(args, 1, c, DECODE), peaks)
        + _predicted_pass_s(args, _pass_subtasks(args, c - 1, c - 1, PREFILL), peaks)
        for c in config.decode_contexts)
    prompt = config.action_prompt_tokens
    action = _predicted_pass_s(args, _pass_subtasks(args, prompt, prompt, PREFILL), peaks) + sum(
        _predicted_pass_s(args, _pass_subtasks(args, 1, prompt + i, DECODE), peaks)
        for i in range(1, config.action_new_tokens))
    weight_bytes = 2 * (2 * args.vocab_size * args.hidden_size + args.num_layers * (
        args.hidden_size * (args.num_heads + 2 * args.num_kv_heads) * args.head_dim
        + args.num_heads * args.head_dim * args.hidden_size
        + 3 * args.hidden_size * args.intermediate_size))
    predicted = {
        **FIXED_COSTS_S,
        "model": weight_bytes / peaks.bytes_per_s / ASSUMED_EFFICIENCY + 2.0,
        "subtasks": runs * (prefill + decode),
        "actions": (config.action_warmup + config.action_repeats) * 5 * action,
    }
    predicted["total"] = sum(predicted.values())
    return {k: round(v, 1) for k, v in predicted.items()}


def run_check(out: Path, dry_run: bool, python: str) -> dict[str, Any]:
    """Runs every step (see the module docstring) and writes OUT/gpu_check.json."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if dry_run or not torch.cuda.is_available() else "cuda:0")
    config = DRY_RUN_CONFIG if device.type == "cpu" else GPU_CONFIG
    run = CheckRun(out, device, config, python)
    report: dict[str, Any] = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dry_run": device.type == "cpu", "config": asdict(config),
        "software": software_record(), "device_before": device_record(device), "steps": {},
    }
    for name, step in STEPS:
        elapsed = time.perf_counter() - started
        if elapsed > config.budget_s:
            report["steps"][name] = {"status": "skipped", "reason": f"budget of "
                                     f"{config.budget_s:.0f} s spent ({elapsed:.0f} s)"}
            continue
        step_started = time.perf_counter()
        try:
            report[name] = step(run)
            status: dict[str, Any] = {"status": "ok"}
        except Exception as error:  # record it and go on: the next steps still measure
            status = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc()}
        status["seconds"] = round(time.perf_counter() - step_started, 2)
        report["steps"][name] = status
        print(f"gpu_check: {name}: {status['status']} in {status['seconds']} s", flush=True)
    report["device_after"] = device_record(device)
    report["total_seconds"] = round(time.perf_counter() - started, 2)
    if report["dry_run"]:
        report["predicted_gpu_run_s"] = {
            name: predict_gpu_seconds(GPU_CONFIG, DevicePeaks.datasheet(name))
            for name in ("H100", "H200")
        }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--dry-run", action="store_true",
                        help="the same steps on the CPU with a tiny model (seconds)")
    args = parser.parse_args(argv)
    report = run_check(args.out, args.dry_run, sys.executable)
    failed = [n for n, s in report["steps"].items() if s["status"] != "ok"]
    print(f"gpu_check: wrote {args.out / 'gpu_check.json'} in {report['total_seconds']} s"
          + (f"; not ok: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
