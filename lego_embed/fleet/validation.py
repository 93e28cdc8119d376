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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from lego_embed.errors import CalibrationError
from lego_embed.fleet.calibration import Calibration, Corrections
from lego_embed.fleet.spec import AdapterSpec, LengthDistribution
from lego_embed.fleet.twin import InstanceConfig, TwinResult, simulate

PROMPT_STD_TOKENS = 230.0
OUTPUT_STD_TOKENS = 180.0
INFEASIBLE_STATUSES = ("failed_startup_no_kv_memory", "failed_startup_cuda_oom")
MIN_MEASURED_LATENCY_MS = 1.0
LATENCY_COLUMNS = ("mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_ttft_ms",
                   "median_ttft_ms", "p99_ttft_ms")


@dataclass(frozen=True)
class RealRun:
    """One row of a calibration CSV: the configuration, the served adapters and what was
    measured (throughput in tokens/s; latency_ms: the LATENCY_COLUMNS present, in ms, over
    completed requests; starved_est as in the CSV)."""

    run_id: str
    status: str
    config: InstanceConfig
    adapters: tuple[AdapterSpec, ...]
    total_throughput_tok_s: float | None
    latency_ms: dict[str, float]
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
        latency_ms={c: v for c in LATENCY_COLUMNS
                    if (v := _optional(row.get(c, ""))) is not None},
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
    agreement with starved_est, infeasible configurations predicted as memory errors, and the
    MAPE of every latency column (LATENCY_COLUMNS) over all `ok` runs (`latency_mape`) and over
    the runs that did not starve in reality (`latency_mape_unstarved`, the regime a plan that
    meets its latency targets runs in); `latency_mdape*` are the medians of the same absolute
    percentage errors (fractions), less sensitive to the few runs where a tiny real value
    meets a queueing twin."""

    throughput_mape: float
    starvation_agreement: float
    infeasible_detected: int
    infeasible_total: int
    false_memory_errors: int
    n_ok: int
    latency_mape: dict[str, float]
    latency_mape_unstarved: dict[str, float]
    latency_mdape: dict[str, float]
    latency_mdape_unstarved: dict[str, float]
    n_unstarved: int
    rows: list[dict]

    @property
    def itl_mape(self) -> float:
        return self.latency_mape.get("mean_itl_ms", float("nan"))


def _fingerprint(calibration: Calibration, duration_s: float | None) -> str:
    behaviour = {k: v for k, v in calibration.to_dict().items() if k != "source"}
    text = json.dumps({"calibration": behaviour, "duration_s": duration_s,
                       "outcome": [f.name for f in fields(RunOutcome)]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunOutcome:
    """The part of a twin result the validation compares (tokens/s; latency_ms keyed like
    LATENCY_COLUMNS, ms)."""

    memory_error: bool
    total_throughput_tok_s: float
    starved: bool
    latency_ms: dict[str, float]

    @classmethod
    def of(cls, result: TwinResult) -> RunOutcome:
        latency = {"mean_itl_ms": result.mean_itl_ms, "mean_ttft_ms": result.mean_ttft_ms}
        for metric, table in (("itl", result.itl_percentiles_ms),
                              ("ttft", result.ttft_percentiles_ms)):
            if table:
                latency[f"median_{metric}_ms"] = table[50]
                latency[f"p99_{metric}_ms"] = table[99]
        return cls(result.memory_error, result.total_throughput_tok_s, result.starved, latency)


def _mape(errors: dict[str, list[float]]) -> dict[str, float]:
    return {c: float(np.mean(errors[c])) for c in LATENCY_COLUMNS if errors.get(c)}


def _mdape(errors: dict[str, list[float]]) -> dict[str, float]:
    return {c: float(np.median(errors[c])) for c in LATENCY_COLUMNS if errors.get(c)}


def _outcome(job: tuple[RealRun, Calibration, float, int]) -> RunOutcome:
    run, calibration, duration_s, seed = job
    return RunOutcome.of(simulate(run.adapters, run.config, calibration, duration_s=duration_s,
                                  seed=seed))


def _outcomes(runs: Sequence[RealRun], calibration: Calibration, duration_s: float | None,
              progress: Callable[[int], None] | None, cache_path: str | Path | None,
              workers: int) -> dict[int, RunOutcome]:
    """Twin outcome of every `ok` or infeasible run, by its index in `runs` (also its seed):
    from the cache when there, else simulated in `workers` processes and appended to it."""
    fingerprint = _fingerprint(calibration, duration_s)
    cached: dict[str, dict] = {}
    if cache_path is not None and Path(cache_path).exists():
        for line in Path(cache_path).read_text().splitlines():
            entry = json.loads(line)
            if entry.get("fingerprint") == fingerprint:
                cached[entry["run"]] = entry["result"]
    wanted = [i for i, run in enumerate(runs) if run.ok or run.infeasible]
    out = {i: RunOutcome(**cached[f"{runs[i].run_id}#{i}"]) for i in wanted
           if f"{runs[i].run_id}#{i}" in cached}
    if progress is not None and out:
        progress(len(out))
    todo = [i for i in wanted if i not in out]
    jobs = [(runs[i], calibration, duration_s or runs[i].duration_s, i) for i in todo]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers)
        results = zip(todo, pool.map(_outcome, jobs, chunksize=1), strict=True)
    else:
        pool = None
        results = ((i, _outcome(job)) for i, job in zip(todo, jobs, strict=True))
    try:
        for i, result in results:
            out[i] = result
            if cache_path is not None:
                with Path(cache_path).open("a") as handle:
                    handle.write(json.dumps({"fingerprint": fingerprint,
                                             "run": f"{runs[i].run_id}#{i}",
                                             "result": asdict(result)}) + "\n")
            if progress is not None:
                progress(1)
    finally:
        if pool is not None:
            pool.shutdown()
    return out


def validate(runs: Sequence[RealRun], calibration: Calibration, duration_s: float | None = None,
             progress: Callable[[int], None] | None = None,
             cache_path: str | Path | None = None, workers: int = 1) -> ValidationReport:
    """Simulates every run (blind Poisson arrivals, seeded by the run's index in `runs`) and
    compares with the measurements. With `cache_path`, per-run twin results are appended to a
    JSONL file and reused by later calls with the same calibration and horizon (so a long
    validation can resume); `workers` processes simulate in parallel."""
    ape, agree, rows = [], [], []
    latency_ape: dict[str, list[float]] = {}
    latency_ape_unstarved: dict[str, list[float]] = {}
    n_unstarved = 0
    infeasible_detected = infeasible_total = false_memory = 0
    outcomes = _outcomes(runs, calibration, duration_s, progress, cache_path, workers)
    for i, run in enumerate(runs):
        if i not in outcomes:
            continue
        result = outcomes[i]
        if run.infeasible:
            infeasible_total += 1
            infeasible_detected += int(result.memory_error)
        elif run.total_throughput_tok_s is not None:
            false_memory += int(result.memory_error)
            real = run.total_throughput_tok_s
            ape.append(abs(result.total_throughput_tok_s - real) / real)
            n_unstarved += int(run.starved is False)
            for column, value in run.latency_ms.items():
                twin = result.latency_ms.get(column)
                # A saturated benchmark client reads many tokens as one chunk: medians of
                # 0.01 ms (README quirk 3) measure the client, not the server.
                if value >= MIN_MEASURED_LATENCY_MS and twin:
                    error = abs(twin - value) / value
                    latency_ape.setdefault(column, []).append(error)
                    if run.starved is False:
                        latency_ape_unstarved.setdefault(column, []).append(error)
            if run.starved is not None:
                agree.append(result.starved == run.starved)
        rows.append({"run": run.run_id, "status": run.status,
                     "real_tok_s": run.total_throughput_tok_s,
                     "twin_tok_s": result.total_throughput_tok_s,
                     "real_latency_ms": run.latency_ms, "twin_latency_ms": result.latency_ms,
                     "real_starved": run.starved, "twin_starved": result.starved,
                     "twin_memory_error": result.memory_error})
    return ValidationReport(
        throughput_mape=float(np.mean(ape)) if ape else float("nan"),
        starvation_agreement=float(np.mean(agree)) if agree else float("nan"),
        infeasible_detected=infeasible_detected, infeasible_total=infeasible_total,
        false_memory_errors=false_memory, n_ok=len(ape), latency_mape=_mape(latency_ape),
        latency_mape_unstarved=_mape(latency_ape_unstarved),
        latency_mdape=_mdape(latency_ape), latency_mdape_unstarved=_mdape(latency_ape_unstarved),
        n_unstarved=n_unstarved,
        rows=rows)


CORRECTION_GRID = {
    "lora_slot_prefill_factor": (0.4, 0.7, 1.0, 1.5),
    "lora_slot_share": (0.3, 0.4, 0.5, 0.6),
    "lora_step_ms": (2.0, 3.0, 4.0),
    "prefill_token_factor": (0.3, 0.4, 0.5),
    "lora_batch_exponent": (0.3, 0.4, 0.5),
    "lora_adapter_scale": (1.1, 1.2, 1.32),
    "lora_rank_exponent": (0.1, 0.2, 0.3),
}
FITTED_FIELDS = tuple(CORRECTION_GRID)
FIT_EVERY = 3


def fit_corrections(runs: Sequence[RealRun], calibration: Calibration,
                    duration_s: float | None = None, every: int = FIT_EVERY, rounds: int = 1,
                    log: Callable[[str], None] | None = None, workers: int = 2) -> Calibration:
    """Coordinate search of the global corrections minimising throughput MAPE + mean-ITL MAPE on
    `runs`, which must come from calibration_runs.csv only. To keep it affordable on a laptop
    CPU it uses every `every`-th `ok` run, simulated for its whole measured duration (None) or
    `duration_s` seconds (a shorter horizon hides the queue an overloaded run builds over its
    hour and biases the ITL of starving runs low), in `workers` processes."""
    chosen = [r for r in runs if r.ok][::every]
    current = calibration.corrections

    def score(corrections: Corrections) -> float:
        report = validate(chosen, calibration.with_corrections(corrections),
                          duration_s=duration_s, workers=workers)
        return report.throughput_mape + report.itl_mape

    best = score(current)
    if log is not None:
        log(f"start: throughput + ITL MAPE {best:.4f} on {len(chosen)} runs")
    for _ in range(rounds):
        for name in FITTED_FIELDS:
            for value in CORRECTION_GRID[name]:
                trial = replace(current, **{name: value})
                if trial == current:
                    continue
                s = score(trial)
                if log is not None:
                    log(f"{name}={value}: {s:.4f} (best {best:.4f})")
                if s < best:
                    best, current = s, trial
    return calibration.with_corrections(current)
