"""Validation of the twin against real end-to-end vLLM runs (calibration_runs*.csv), and the fit
of the few global corrections on calibration_runs.csv only.

Each CSV row is one real 1-hour run; it is rebuilt as a workload (adapter ranks cycled over
`adapter_ranks_served`, per-adapter rates from `n_adapters_by_rate` shuffled onto adapters,
ShareGPT-like lengths with the run's pool means) and simulated blind: the twin draws its own
Poisson arrivals, it does not replay the real ones.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from lego_embed.errors import CalibrationError
from lego_embed.fleet.calibration import Calibration, Corrections
from lego_embed.fleet.spec import AdapterSpec, LengthDistribution
from lego_embed.fleet.twin import InstanceConfig, TwinResult, simulate

PROMPT_STD_TOKENS = 230.0
OUTPUT_STD_TOKENS = 180.0
INFEASIBLE_STATUSES = ("failed_startup_no_kv_memory", "failed_startup_cuda_oom")


@dataclass(frozen=True)
class RealRun:
    """One row of a calibration CSV: the configuration, the served adapters and what was
    measured (throughput in tokens/s; starved_est as in the CSV)."""

    run_id: str
    status: str
    config: InstanceConfig
    adapters: tuple[AdapterSpec, ...]
    total_throughput_tok_s: float | None
    mean_itl_ms: float | None
    starved: bool | None
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.total_throughput_tok_s is not None

    @property
    def infeasible(self) -> bool:
        return self.status in INFEASIBLE_STATUSES


def _pairs(text: str) -> list[tuple[float, int]]:
    return [(float(k), int(v)) for k, v in (item.split(":") for item in text.split(";") if item)]


def _optional(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def run_from_row(row: dict[str, str], seed: int = 0) -> RealRun:
    """Rebuilds the served workload of one CSV row."""
    try:
        n = int(row["n_served_adapters"])
        ranks_cycle = [int(r) for r in row["adapter_ranks_served"].split()]
        rates = [rate for rate, count in _pairs(row["n_adapters_by_rate"]) for _ in range(count)]
        prompt_mean = float(row["pool_mean_prompt_tokens"] or 222.0)
        output_mean = float(row["pool_mean_requested_output_tokens"] or 200.0)
        config = InstanceConfig(max_loras=int(row["max_loras"]),
                                max_cpu_loras=int(row["max_cpu_loras"]),
                                max_lora_rank=int(row["max_lora_rank"]),
                                max_num_seqs=int(row["max_num_seqs"] or 2048))
    except (KeyError, ValueError) as error:
        raise CalibrationError(f"run row {row.get('run_folder')!r} is malformed: {error!r}") \
            from error
    if len(rates) != n:
        raise CalibrationError(f"run row {row['run_folder']}: {len(rates)} rates for {n} adapters")
    rng = np.random.default_rng(seed)
    rng.shuffle(rates)
    prompt = LengthDistribution(prompt_mean, PROMPT_STD_TOKENS, 4, 1024)
    output = LengthDistribution(output_mean, OUTPUT_STD_TOKENS, 1, 2044)
    adapters = tuple(AdapterSpec(adapter_id=f"a{i}", rank=ranks_cycle[i % len(ranks_cycle)],
                                 rate_req_s=rates[i], prompt=prompt, output=output)
                     for i in range(n))
    starved = row.get("starved_est", "")
    return RealRun(
        run_id=f"{row['experiment_group']}/{row['run_folder']}", status=row["status"],
        config=config, adapters=adapters,
        total_throughput_tok_s=_optional(row.get("total_throughput_tok_s", "")),
        mean_itl_ms=_optional(row.get("mean_itl_ms", "")),
        starved=None if starved == "" else starved == "1",
        duration_s=float(row["duration_s"] or 3600.0),
    )


def load_runs(path: str | Path) -> list[RealRun]:
    """Reads a calibration_runs*.csv file."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"runs file {path} does not exist")
    with path.open(newline="") as handle:
        return [run_from_row(row) for row in csv.DictReader(handle)]


@dataclass
class ValidationReport:
    """Twin vs real: MAPE of total throughput over `ok` runs (fraction, not %), starvation
    agreement with starved_est, infeasible configurations predicted as memory errors."""

    throughput_mape: float
    starvation_agreement: float
    infeasible_detected: int
    infeasible_total: int
    false_memory_errors: int
    n_ok: int
    itl_mape: float
    rows: list[dict]


def _fingerprint(calibration: Calibration, duration_s: float | None) -> str:
    text = json.dumps({"calibration": calibration.to_dict(), "duration_s": duration_s},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunOutcome:
    """The part of a twin result the validation compares (tokens/s, ms)."""

    memory_error: bool
    total_throughput_tok_s: float
    mean_itl_ms: float
    starved: bool

    @classmethod
    def of(cls, result: TwinResult) -> RunOutcome:
        return cls(result.memory_error, result.total_throughput_tok_s, result.mean_itl_ms,
                   result.starved)


def validate(runs: Sequence[RealRun], calibration: Calibration, duration_s: float | None = None,
             progress: Callable[[int], None] | None = None,
             cache_path: str | Path | None = None) -> ValidationReport:
    """Simulates every run (blind Poisson arrivals) and compares with the measurements.
    With `cache_path`, per-run twin results are appended to a JSONL file and reused by later
    calls with the same calibration and horizon (so a long validation can resume)."""
    ape, itl_ape, agree, rows = [], [], [], []
    infeasible_detected = infeasible_total = false_memory = 0
    fingerprint = _fingerprint(calibration, duration_s)
    cached: dict[str, dict] = {}
    if cache_path is not None and Path(cache_path).exists():
        for line in Path(cache_path).read_text().splitlines():
            entry = json.loads(line)
            if entry.get("fingerprint") == fingerprint:
                cached[entry["run"]] = entry["result"]
    for i, run in enumerate(runs):
        if not (run.ok or run.infeasible):
            continue
        key = f"{run.run_id}#{i}"
        if key in cached:
            result = RunOutcome(**cached[key])
        else:
            result = RunOutcome.of(simulate(run.adapters, run.config, calibration,
                                            duration_s=duration_s or run.duration_s, seed=i))
            if cache_path is not None:
                with Path(cache_path).open("a") as handle:
                    handle.write(json.dumps({"fingerprint": fingerprint, "run": key,
                                             "result": asdict(result)}) + "\n")
        if run.infeasible:
            infeasible_total += 1
            infeasible_detected += int(result.memory_error)
        elif run.total_throughput_tok_s is not None:
            false_memory += int(result.memory_error)
            real = run.total_throughput_tok_s
            ape.append(abs(result.total_throughput_tok_s - real) / real)
            if run.mean_itl_ms and result.mean_itl_ms:
                itl_ape.append(abs(result.mean_itl_ms - run.mean_itl_ms) / run.mean_itl_ms)
            if run.starved is not None:
                agree.append(result.starved == run.starved)
        rows.append({"run": run.run_id, "status": run.status,
                     "real_tok_s": run.total_throughput_tok_s,
                     "twin_tok_s": result.total_throughput_tok_s,
                     "real_itl_ms": run.mean_itl_ms, "twin_itl_ms": result.mean_itl_ms,
                     "real_starved": run.starved, "twin_starved": result.starved,
                     "twin_memory_error": result.memory_error})
        if progress is not None:
            progress(1)
    return ValidationReport(
        throughput_mape=float(np.mean(ape)) if ape else float("nan"),
        starvation_agreement=float(np.mean(agree)) if agree else float("nan"),
        infeasible_detected=infeasible_detected, infeasible_total=infeasible_total,
        false_memory_errors=false_memory, n_ok=len(ape),
        itl_mape=float(np.mean(itl_ape)) if itl_ape else float("nan"), rows=rows)


CORRECTION_GRID = {
    "lora_batch_exponent": (0.4, 0.5, 0.6, 0.7),
    "prefill_token_factor": (0.2, 0.3, 0.4, 0.5, 0.7),
    "step_scale": (0.8, 0.9, 1.0, 1.1),
    "lora_rank_exponent": (0.0, 0.2, 0.4),
    "waiting_scan_us": (0.0, 0.25),
}
FITTED_FIELDS = tuple(CORRECTION_GRID)


def fit_corrections(runs: Sequence[RealRun], calibration: Calibration, duration_s: float = 1500.0,
                    rounds: int = 1, log: Callable[[str], None] | None = None) -> Calibration:
    """Coordinate search of the global corrections minimising throughput MAPE on `runs`, which
    must come from calibration_runs.csv only. To keep it affordable on a laptop CPU it uses every
    3rd starved run and every 6th other `ok` run, simulated for `duration_s` seconds."""
    ok_runs = [r for r in runs if r.ok]
    chosen = [r for r in ok_runs if r.starved][::3] + [r for r in ok_runs if not r.starved][::6]
    current = calibration.corrections

    def score(corrections: Corrections) -> float:
        return validate(chosen, calibration.with_corrections(corrections),
                        duration_s=duration_s).throughput_mape

    best = score(current)
    if log is not None:
        log(f"start: mape {best:.4f} on {len(chosen)} runs")
    for _ in range(rounds):
        for name in FITTED_FIELDS:
            for value in CORRECTION_GRID[name]:
                trial = replace(current, **{name: value})
                if trial == current:
                    continue
                s = score(trial)
                if log is not None:
                    log(f"{name}={value}: mape {s:.4f} (best {best:.4f})")
                if s < best:
                    best, current = s, trial
    return calibration.with_corrections(current)
