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
6. `colocation`: the render stand-in replays a shared trace at 60 FPS as GPU work, in its own
   process (own CUDA context) and as a thread of ours (highest-priority stream), beside the
   runtime answering NPC actions with the model of step 3 (`bench.gpu_colocation`; policies
   off / free / inter_frame / static_skip / lego on the config's subset of APM x NPCs).
   It needs the shared traces: ../shared/traces, else the checkout's shared/traces, or
   `--traces DIR`; no run of it starts that would end after `colocation_stop_s`.

Output: OUT/gpu_check.json (device before and after, software, config, step status and seconds,
each step's result under its name, and for a dry run the predicted length of the GPU run),
OUT/colocation_gpu.json (the co-location rows, as docs/benchmarks/colocation_cpu.json has them)
and the CUDA tests' own output files.
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
from lego_embed.bench.gpu_colocation import (
    RENDER_PROCESS_START_S,
    ColocationPlan,
    find_traces,
    run_gpu_colocation,
    synthetic_bundle,
    with_tokenizer,
)
from lego_embed.bench.gpu_profile import profile_subtasks, time_actions
from lego_embed.bench.roofline import DevicePeaks, Work, subtask_work
from lego_embed.bench.synthetic import (
    SKIP_FRACTIONS,
    llama3_8b_args,
    skip_plans,
    synthetic_model,
    tiny_args,
)
from lego_embed.engines.trace_replay import PassModel
from lego_embed.model.config import ModelArgs
from lego_embed.model.subtask import DECODE, PREFILL, Subtask, SubtaskKind
from lego_embed.runtime.runtime import WARMUP_DECODE_TOKENS
from lego_embed.runtime.scheduler import SPLIT_PARTS, SchedulerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks" / "gpu"
# What one subtask costs beyond its work on a GPU (launch, CUDA-event sync, Python), and the
# share of the roofline a run reaches: the prediction's two assumptions.
ASSUMED_OVERHEAD_S = 60e-6
ASSUMED_EFFICIENCY = 0.4
FIXED_COSTS_S = {"interpreter_and_imports": 15.0, "cuda_tests": 90.0, "peaks": 5.0}
# A co-location run beyond its replay: the render stand-in's start delay, and waiting for the
# answers in flight and stopping the runtime (s).
COLOCATION_RUN_OVERHEAD_S = 0.6


@dataclass(frozen=True)
class CheckConfig:
    """Sizes and repetitions of one run of the check. model: "llama3_8b" or "tiny";
    prompt_lengths / decode_contexts in tokens; action_* the LEGO action's prompt and free
    output tokens; matmul_size (elements per side) and copy_bytes size the peak measurements;
    budget_s: no step starts after this many seconds; colocation: the co-location step's
    subset; colocation_stop_s: none of its runs starts that would end after this many seconds
    of the check."""

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
    colocation: ColocationPlan
    colocation_stop_s: float

    def model_args(self) -> ModelArgs:
        return llama3_8b_args() if self.model == "llama3_8b" else tiny_args()

    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


GPU_CONFIG = CheckConfig(
    model="llama3_8b", dtype="bfloat16", prompt_lengths=(128, 256, 512),
    decode_contexts=(512, 516, 520, 524, 528), action_prompt_tokens=512, action_new_tokens=16,
    profile_warmup=3, profile_repeats=20, action_warmup=2, action_repeats=10,
    matmul_size=8192, copy_bytes=2**32, budget_s=420.0,
    colocation=ColocationPlan(traces=("blackmyth_render_1",), settings=((200, 1), (300, 4)),
                              seconds=3.0, repeats=2, prompt_tokens=512, new_tokens=16),
    colocation_stop_s=450.0,
)
DRY_RUN_CONFIG = CheckConfig(
    model="tiny", dtype="bfloat16", prompt_lengths=(16, 32), decode_contexts=(32, 34, 36),
    action_prompt_tokens=32, action_new_tokens=4, profile_warmup=1, profile_repeats=2,
    action_warmup=1, action_repeats=2, matmul_size=256, copy_bytes=2**22, budget_s=300.0,
    colocation=ColocationPlan(traces=("blackmyth_render_1",), settings=((300, 4),),
                              seconds=1.0, repeats=1, prompt_tokens=32, new_tokens=4,
                              answer_grace_s=2.0),
    colocation_stop_s=400.0,
)


@dataclass
class CheckRun:
    """The state the steps share: where results go, the device, the config and what earlier
    steps made (the model, the peaks)."""

    out: Path
    device: torch.device
    config: CheckConfig
    python: str
    stop_at: float
    traces_dir: Path | None = None
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


def step_colocation(run: CheckRun) -> dict[str, Any]:
    plan = run.config.colocation
    traces = find_traces(plan.traces, run.traces_dir)
    loaded = with_tokenizer(run.loaded)
    bundle = synthetic_bundle(loaded, skip_plans(loaded))
    started = time.monotonic()
    result = run_gpu_colocation(loaded, bundle, traces, plan, run.device.type, run.stop_at)
    report = {
        "command": "tools/gpu_check.sh" + (" --dry-run" if run.device.type == "cpu" else ""),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": device_record(run.device),
        "render_device": run.device.type,
        "model": f"{run.config.model} shape, {run.config.dtype}, random weights (synthetic)",
        "skip_levels": [{"level": level.level, "skipped_layers": level.skipped_layers,
                         "span": [level.span.first_layer, level.span.last_layer]}
                        for level in bundle.levels],
        "accuracy_by_level": {},
        "seconds_per_run": plan.seconds, "repeats": plan.repeats,
        "traces": {t.name: str(t.path) for t in traces},
        "pass_model": asdict(PassModel()),
        **result,
    }
    (run.out / "colocation_gpu.json").write_text(json.dumps(report, indent=1) + "\n")
    if result["failed_runs"]:
        first = result["failed_runs"][0]
        raise RuntimeError(f"{len(result['failed_runs'])} co-location run(s) failed, the first "
                           f"with {first['error']}; the others are in colocation_gpu.json")
    keys = ("placement", "trace", "apm", "npcs", "policy", "slo_attainment",
            "action_slo_attainment", "p99_action_ms", "mean_skipped_layers", "fps",
            "added_frame_miss_rate")
    return {
        "file": "colocation_gpu.json", "runs": len(result["runs"]),
        "skipped_runs": len(result["skipped_runs"]), "duration_s": report["duration_s"],
        "rows": [{k: (row[k]["mean"] if isinstance(row[k], dict) else row[k]) for k in keys}
                 for row in result["rows"]],
    }


STEPS: tuple[tuple[str, Callable[[CheckRun], Any]], ...] = (
    ("cuda_tests", step_cuda_tests),
    ("peaks", step_peaks),
    ("model", step_model),
    ("subtasks", step_subtasks),
    ("actions", step_actions),
    ("colocation", step_colocation),
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
        "actions": (config.action_warmup + config.action_repeats) * len(SKIP_FRACTIONS) * action,
        "colocation": _predicted_colocation_s(config.colocation, args, peaks),
    }
    predicted["total"] = sum(predicted.values())
    return {k: round(v, 1) for k, v in predicted.items()}


def _predicted_colocation_s(plan: ColocationPlan, args: ModelArgs, peaks: DevicePeaks) -> float:
    """The co-location step: every run's replay and COLOCATION_RUN_OVERHEAD_S, the runtime's
    warm-up in each LLM run (one prompt of the plan's length and its decode steps per level,
    twice at the full model, once per FFN split, and batched at two levels for every batch size
    up to max_batch), and a render process started per run of placement `process`."""
    prompt = plan.prompt_tokens
    decode = _predicted_pass_s(args, _pass_subtasks(args, 1, prompt + 1, DECODE), peaks)
    prefill = _predicted_pass_s(args, _pass_subtasks(args, prompt, prompt, PREFILL), peaks)
    one = prefill + (WARMUP_DECODE_TOKENS - 1) * decode
    batches = sum(size * prefill + (WARMUP_DECODE_TOKENS - 1) * decode
                  for size in range(2, SchedulerConfig().max_batch + 1))
    warmup = (len(SKIP_FRACTIONS) + 1 + len(SPLIT_PARTS)) * one + 2 * batches
    blocks = plan.repeats * len(plan.placements) * len(plan.traces)
    llm_runs = blocks * len(plan.settings) * len(plan.policies)
    process_runs = plan.runs() * plan.placements.count("process") / len(plan.placements)
    return (plan.runs() * (plan.seconds + COLOCATION_RUN_OVERHEAD_S) + llm_runs * warmup
            + process_runs * RENDER_PROCESS_START_S)


def run_check(out: Path, dry_run: bool, python: str,
              traces_dir: Path | None = None) -> dict[str, Any]:
    """Runs every step (see the module docstring) and writes OUT/gpu_check.json."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if dry_run or not torch.cuda.is_available() else "cuda:0")
    config = DRY_RUN_CONFIG if device.type == "cpu" else GPU_CONFIG
    run = CheckRun(out, device, config, python, time.monotonic() + config.colocation_stop_s,
                   traces_dir)
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
    parser.add_argument("--traces", type=Path, default=None,
                        help="folder of the shared render traces (default: ../shared/traces, "
                             "else the checkout's shared/traces)")
    args = parser.parse_args(argv)
    report = run_check(args.out, args.dry_run, sys.executable, args.traces)
    failed = [n for n, s in report["steps"].items() if s["status"] != "ok"]
    print(f"gpu_check: wrote {args.out / 'gpu_check.json'} in {report['total_seconds']} s"
          + (f"; not ok: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
