"""Calibration of the serving twin: from a component file (format of components_qwen.json) to the
constants the twin uses, plus a few global corrections fitted on end-to-end runs.

Component models (all fitted here, from the component file only):
- memory: `weights_plus_slots_gib = w0 + w1 * max_loras * max_lora_rank` and
  `kv_cache_tokens = (util * gpu_gib - weights_plus_slots_gib - overhead_gib) / gib_per_token`,
  least squares over the `gpu_memory_vs_adapter_slots` rows (the GPU size enters here, so another
  GPU is a different `gpu_memory_gib`);
- adapter loading: disk->CPU and CPU->GPU times (ms) by adapter rank (`adapter_loading_time`);
- step latency (ms) of one engine step without LoRA:
  `c0 + c_token * scheduled_tokens + c_context * context_tokens_of_decodes`, least squares over the
  `base_decode` sweeps (ITL = one decode step);
- LoRA cost: extra ms per step as a function of the number of distinct adapters in the batch,
  the `lora_decode_overhead` ITL minus the `lora_ref_no_lora` ITL at the same batch.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from lego_embed.errors import CalibrationError

GPU_MEMORY_UTILIZATION = 0.9


@dataclass(frozen=True)
class MemoryModel:
    """GPU memory model: weights + LoRA slot buffers (GiB) grow linearly with
    max_loras * max_lora_rank; the KV cache gets what is left of `utilization * gpu_memory_gib`.
    A KV cache smaller than the instance's max_model_len (min_kv_tokens when not given) fails
    vLLM's start-up check (memory error)."""

    weights_gib: float
    slot_gib_per_rank_unit: float
    overhead_gib: float
    gib_per_kv_token: float
    gpu_memory_gib: float
    utilization: float = GPU_MEMORY_UTILIZATION
    min_kv_tokens: int = 32768

    def weights_plus_slots_gib(self, max_loras: int, max_lora_rank: int) -> float:
        return self.weights_gib + self.slot_gib_per_rank_unit * max_loras * max_lora_rank

    def kv_cache_tokens(self, max_loras: int, max_lora_rank: int,
                        gpu_memory_gib: float | None = None) -> int:
        """KV-cache capacity (tokens) of an instance; may be negative when nothing is left."""
        gpu = self.gpu_memory_gib if gpu_memory_gib is None else gpu_memory_gib
        free = (self.utilization * gpu - self.weights_plus_slots_gib(max_loras, max_lora_rank)
                - self.overhead_gib)
        return int(free / self.gib_per_kv_token)

    def fits(self, max_loras: int, max_lora_rank: int, gpu_memory_gib: float | None = None,
             max_model_len: int | None = None) -> bool:
        need = self.min_kv_tokens if max_model_len is None else max_model_len
        return self.kv_cache_tokens(max_loras, max_lora_rank, gpu_memory_gib) >= need


@dataclass(frozen=True)
class StepModel:
    """Latency of one engine step (ms). Base: c0_ms + c_token_ms * scheduled tokens +
    c_context_ms * KV tokens attended by the decodes. LoRA: lora_u_ms[i] is the extra ms with
    lora_u_points[i] distinct adapters in a batch of lora_ref_batch decode tokens, measured with
    lora_ref_max_loras GPU slots at max_lora_rank lora_ref_rank."""

    c0_ms: float
    c_token_ms: float
    c_context_ms: float
    lora_u_points: tuple[int, ...]
    lora_u_ms: tuple[float, ...]
    lora_ref_batch: int
    lora_ref_rank: int
    lora_ref_max_loras: int


@dataclass(frozen=True)
class LoadingModel:
    """Adapter loading latencies (ms) by adapter rank: disk->CPU and CPU->GPU (a swap)."""

    disk_ms_by_rank: dict[int, float]
    cpu_to_gpu_ms_by_rank: dict[int, float]

    def _lookup(self, table: dict[int, float], rank: int) -> float:
        ranks = sorted(table)
        return float(np.interp(rank, ranks, [table[r] for r in ranks]))

    def disk_ms(self, rank: int) -> float:
        return self._lookup(self.disk_ms_by_rank, rank)

    def cpu_to_gpu_ms(self, rank: int) -> float:
        return self._lookup(self.cpu_to_gpu_ms_by_rank, rank)


@dataclass(frozen=True)
class Corrections:
    """The few global corrections fitted on end-to-end runs (calibration_runs.csv only).

    step_scale: multiplies every step latency (serving stack overheads not in the sweeps).
    prefill_token_factor: cost of a prefill token relative to a decode token in c_token_ms.
    lora_step_ms: the part of the intercept of the sweep's LoRA cost paid once per step (ms);
        the rest is paid per batch token (the sweep has one batch size, so the split is fitted);
    lora_slot_share: the share of that per-token cost that grows with the GPU slots
        (max_loras / the sweep's): the LoRA kernels launch blocks for every slot and every
        block of the step's tokens, prefill or decode (a slot without tokens returns at once);
    lora_slot_prefill_factor: cost of a prefill token relative to a decode token in that
        slot-growing share;
    lora_batch_exponent: above the sweep's batch, the per-adapter LoRA cost grows as
        (batch tokens / sweep batch) ** exponent (below it, it stays as measured);
    lora_rank_exponent: the per-adapter LoRA cost scales as (rank tiles / the sweep's rank
        tiles) ** exponent, a rank tile being 16 of `--max-lora-rank` (vLLM 0.8.5's Triton
        LoRA kernels block the rank dimension by 16: ranks 8 and 16 launch the same blocks,
        rank 32 twice as many along it);
    lora_adapter_scale: the per-adapter LoRA cost of a served step relative to the sweep's at
        the same rank tiles (the calibration runs all have `--max-lora-rank` 16 or 32, so this
        level and the rank-8 sweep cannot be told apart; it is fitted).
    waiting_scan_us: scheduler time per waiting request scanned each step (us).
    generated_to_requested: generated / requested output tokens (EOS stops some early).
    client_max_outstanding: the benchmark client's cap on requests in flight (0 = no cap).
    """

    step_scale: float = 1.0
    prefill_token_factor: float = 0.4
    lora_step_ms: float = 3.0
    lora_slot_share: float = 0.5
    lora_slot_prefill_factor: float = 0.7
    lora_batch_exponent: float = 0.4
    lora_rank_exponent: float = 0.1
    lora_adapter_scale: float = 1.2
    waiting_scan_us: float = 0.0
    generated_to_requested: float = 0.955
    client_max_outstanding: int = 27000


@dataclass(frozen=True)
class Calibration:
    """Everything the twin needs about one base model (`model`, served as `hf_model_id`, at most
    `model_max_len` tokens) on one GPU type (`gpu`) under one vLLM version."""

    model: str
    memory: MemoryModel
    step: StepModel
    loading: LoadingModel
    corrections: Corrections = field(default_factory=Corrections)
    source: str = ""
    gpu: str = ""
    hf_model_id: str = ""
    vllm_version: str = ""
    model_max_len: int = 32768

    def with_corrections(self, corrections: Corrections) -> Calibration:
        return replace(self, corrections=corrections)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["loading"] = {k: {str(r): v for r, v in table.items()}
                           for k, table in data["loading"].items()}
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def _table(components: dict[str, Any], name: str, required: tuple[str, ...]) -> list[dict]:
    table = components.get(name)
    if not isinstance(table, dict) or "columns" not in table or "rows" not in table:
        raise CalibrationError(f"component file: table '{name}' with 'columns' and 'rows' is "
                               "missing (see components_qwen.json for the format)")
    columns = table["columns"]
    missing = [c for c in required if c not in columns]
    if missing:
        raise CalibrationError(f"component file: table '{name}' lacks columns {missing}")
    try:
        return [dict(zip(columns, row, strict=True)) for row in table["rows"]]
    except (ValueError, TypeError) as error:
        raise CalibrationError(f"component file: table '{name}' has a row whose length differs "
                               f"from its columns ({error})") from error


def fit_memory_model(rows: list[dict], gpu_memory_gib: float) -> MemoryModel:
    ok = [r for r in rows if r["status"] == "ok" and r["kv_cache_tokens"]]
    if len(ok) < 3:
        raise CalibrationError("gpu_memory_vs_adapter_slots: need at least 3 'ok' rows")
    units = np.array([r["max_loras"] * r["max_lora_rank"] for r in ok], dtype=float)
    weights = np.array([r["weights_plus_lora_slots_GiB"] for r in ok], dtype=float)
    kv = np.array([r["kv_cache_tokens"] for r in ok], dtype=float)
    w1, w0 = np.polyfit(units, weights, 1)
    # util*gpu - weights - overhead = kv * gib_per_token  ->  weights = A - g * kv
    slope, intercept = np.polyfit(kv, weights, 1)
    gib_per_token = -slope
    overhead = GPU_MEMORY_UTILIZATION * gpu_memory_gib - intercept
    return MemoryModel(weights_gib=float(w0), slot_gib_per_rank_unit=float(w1),
                       overhead_gib=float(overhead), gib_per_kv_token=float(gib_per_token),
                       gpu_memory_gib=gpu_memory_gib)


def fit_step_model(rows: list[dict]) -> StepModel:
    base = [r for r in rows if r["experiment"] == "base_decode" and r["status"] == "ok"]
    if len(base) < 3:
        raise CalibrationError("step_latency_benchmarks: need at least 3 'base_decode' rows")
    batch = np.array([r["mean_running_batch"] for r in base], dtype=float)
    prompt = np.array([r["total_input_tokens"] / r["num_prompts"] for r in base], dtype=float)
    context = batch * (prompt + np.array([r["synthetic_output_len"] for r in base]) / 2.0)
    itl = np.array([r["mean_itl_ms"] for r in base], dtype=float)
    design = np.stack([np.ones_like(batch), batch, context], axis=1)
    (c0, c_token, c_context), *_ = np.linalg.lstsq(design, itl, rcond=None)
    lora = [r for r in rows if r["experiment"] == "lora_decode_overhead" and r["status"] == "ok"]
    ref = [r for r in rows if r["experiment"] == "lora_ref_no_lora" and r["status"] == "ok"]
    if not lora or not ref:
        raise CalibrationError("step_latency_benchmarks: need 'lora_decode_overhead' and "
                               "'lora_ref_no_lora' rows")
    ref_itl = {r["synthetic_output_len"]: r["mean_itl_ms"] for r in ref}
    # x = distinct adapters actually in a step (the server log's mean), not the number the
    # requests were spread over: with 250 sequences, 192 adapters give ~141 per step.
    extra: dict[int, list[float]] = {}
    unique: dict[int, list[float]] = {}
    for r in lora:
        if r["synthetic_output_len"] in ref_itl:
            spread = int(r["restrict_loras_distinct_adapters"])
            extra.setdefault(spread, []).append(
                r["mean_itl_ms"] - ref_itl[r["synthetic_output_len"]])
            if r.get("mean_unique_adapters_per_step"):
                unique.setdefault(spread, []).append(float(r["mean_unique_adapters_per_step"]))
    spreads = sorted(s for s in extra if s in unique) or sorted(extra)
    points = tuple(int(round(np.mean(unique[s]))) if s in unique else s for s in spreads)
    return StepModel(
        c0_ms=float(c0), c_token_ms=float(c_token), c_context_ms=float(c_context),
        lora_u_points=points, lora_u_ms=tuple(float(np.mean(extra[s])) for s in spreads),
        lora_ref_batch=int(lora[0]["max_num_seqs"]), lora_ref_rank=int(lora[0]["max_lora_rank"]),
        lora_ref_max_loras=int(lora[0]["max_loras"]),
    )


def fit_loading_model(rows: list[dict]) -> LoadingModel:
    if not rows:
        raise CalibrationError("adapter_loading_time: the table has no rows")
    disk: dict[int, list[float]] = {}
    swap: dict[int, list[float]] = {}
    for r in rows:
        disk.setdefault(int(r["adapter_rank"]), []).append(float(r["disk_load_mean_ms"]))
        swap.setdefault(int(r["adapter_rank"]), []).append(float(r["cpu_to_gpu_serving_mean_ms"]))
    return LoadingModel(disk_ms_by_rank={k: float(np.mean(v)) for k, v in disk.items()},
                        cpu_to_gpu_ms_by_rank={k: float(np.mean(v)) for k, v in swap.items()})


def gpu_memory_from_components(components: dict[str, Any]) -> float:
    """The GPU total (GiB) stated in the memory table's description, else 63.43 (H100 64 GB)."""
    text = components.get("gpu_memory_vs_adapter_slots", {}).get("description", "")
    marker = "total capacity of "
    if marker in text:
        return float(text.split(marker, 1)[1].split(" ")[0])
    return 63.43


def calibrate(components_path: str | Path, corrections: Corrections | None = None,
              gpu: str = "h100-64gb", base_model: str | None = None,
              hf_model_id: str | None = None, vllm_version: str | None = None,
              model_max_len: int = 32768) -> Calibration:
    """Builds the calibration of the component file's model on GPU `gpu` (names default to the
    component file's `model`, `hf_model_id` and the vLLM version its `_about` names); raises
    CalibrationError when malformed or when a name is neither given nor in the file."""
    path = Path(components_path)
    if not path.is_file():
        raise CalibrationError(f"component file {path} does not exist")
    try:
        components = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CalibrationError(f"component file {path} is not valid JSON: {error}") from error
    if not isinstance(components, dict):
        raise CalibrationError(f"component file {path}: top level must be a JSON object")
    memory_rows = _table(components, "gpu_memory_vs_adapter_slots",
                         ("max_loras", "max_lora_rank", "weights_plus_lora_slots_GiB",
                          "kv_cache_tokens", "status"))
    loading_rows = _table(components, "adapter_loading_time",
                          ("adapter_rank", "disk_load_mean_ms", "cpu_to_gpu_serving_mean_ms"))
    step_rows = _table(components, "step_latency_benchmarks",
                       ("experiment", "max_num_seqs", "synthetic_output_len", "mean_itl_ms",
                        "mean_running_batch", "total_input_tokens", "num_prompts",
                        "restrict_loras_distinct_adapters", "max_lora_rank", "status"))
    model = base_model or components.get("model")
    hf_id = hf_model_id or components.get("hf_model_id")
    version = vllm_version or components.get("vllm_version")
    if version is None:
        found = re.search(r"vllm_(\d+\.\d+\.\d+)", str(components.get("_about", "")))
        version = found.group(1) if found else None
    for value, what in ((model, "the base model's name (--base-model)"),
                        (hf_id, "the model id to serve (--hf-model-id)"),
                        (version, "the vLLM version it was measured on (--vllm-version)")):
        if not value:
            raise CalibrationError(f"component file {path} does not name {what}: give it")
    return Calibration(
        model=str(model),
        memory=fit_memory_model(memory_rows, gpu_memory_from_components(components)),
        step=fit_step_model(step_rows),
        loading=fit_loading_model(loading_rows),
        corrections=corrections or Corrections(),
        source=str(path),
        gpu=gpu, hf_model_id=str(hf_id), vllm_version=str(version), model_max_len=model_max_len,
    )


def calibration_file_name(base_model: str, gpu: str) -> str:
    """The file name `lego-embed fleet calibrate` writes and the planner looks for."""
    return f"{base_model}__{gpu}.calibration.json"


def find_calibration(base_model: str, gpu: str, directories: list[Path]) -> Path:
    """The calibration file of `base_model` on `gpu` in the first directory that has one;
    refuses (CalibrationError) a pair that was never calibrated."""
    name = calibration_file_name(base_model, gpu)
    for directory in directories:
        if (directory / name).is_file():
            return directory / name
    known = sorted({p.name.removesuffix(".calibration.json").replace("__", " on ")
                    for d in directories if d.is_dir() for p in d.glob("*.calibration.json")})
    raise CalibrationError(
        f"no calibration for base model '{base_model}' on GPU '{gpu}' (looked for {name} in "
        f"{', '.join(str(d) for d in directories)}; calibrated: {', '.join(known) or 'none'}). "
        "The twin cannot plan for a model or GPU it has not measured: calibrate it first with "
        f"`lego-embed fleet calibrate COMPONENTS.json --base-model {base_model} --gpu {gpu} "
        "--out DIR` (a component file of the same tables as components_qwen.json, measured "
        "on that GPU), then `lego-embed fleet dataset` and `lego-embed fleet train` for its "
        "surrogate")


def load_calibration(path: str | Path) -> Calibration:
    """Reads a calibration written by `Calibration.save` (`lego-embed fleet calibrate`)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration file {path} does not exist; write one with "
                               "`lego-embed fleet calibrate components.json --out FILE`")
    try:
        data = json.loads(path.read_text())
        step = data["step"]
        step["lora_u_points"] = tuple(step["lora_u_points"])
        step["lora_u_ms"] = tuple(step["lora_u_ms"])
        loading = {k: {int(r): float(v) for r, v in table.items()}
                   for k, table in data["loading"].items()}
        known = {f.name for f in fields(Corrections)}
        stored = {k: v for k, v in data.get("corrections", {}).items() if k in known}
        if "prefill_token_factor" in stored:  # files from before the slot-scaled prefill weight
            stored.setdefault("lora_slot_prefill_factor", stored["prefill_token_factor"])
        corrections = Corrections(**stored)
        return Calibration(model=data["model"], memory=MemoryModel(**data["memory"]),
                           step=StepModel(**step), loading=LoadingModel(**loading),
                           corrections=corrections, source=data.get("source", ""),
                           gpu=data["gpu"], hf_model_id=data["hf_model_id"],
                           vllm_version=data["vllm_version"],
                           model_max_len=int(data["model_max_len"]))
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise CalibrationError(f"calibration file {path} is malformed ({error!r}); rewrite it "
                               "with `lego-embed fleet calibrate`") from error
