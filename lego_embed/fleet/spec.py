"""Workload and cluster spec for the fleet planner: dataclasses, validation, synthetic generators.

A workload file (YAML or JSON) names the base model, the GPU, and every LoRA adapter to host:

    name: my_game
    base_model: {name: qwen-2.5-7b-instruct, params_billion: 7.6, num_layers: 28, hidden_size: 3584}
    gpu: {name: h100-64gb, memory_gib: 63.43}
    defaults: {prompt_tokens: {mean: 222, std: 200}, output_tokens: {mean: 200, std: 180}}
    adapters:
      - {id: npc_0, rank: 8, rate_req_s: 0.1}
      - {id: npc_1, rank: 16, rate_req_s: 0.05, prompt_tokens: {mean: 300, std: 100}}

Every problem is reported as a `WorkloadSpecError` naming the field and what to fix.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lego_embed.errors import WorkloadSpecError

SUPPORTED_RANKS = (8, 16, 32, 64)


@dataclass(frozen=True)
class LengthDistribution:
    """Token-length distribution of prompts or requested outputs: a log-normal with this mean and
    standard deviation (tokens), clipped to [min_tokens, max_tokens]."""

    mean_tokens: float
    std_tokens: float
    min_tokens: int = 4
    max_tokens: int = 1024

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draws n lengths (tokens, int64); the clipped draws keep mean_tokens on average."""
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if self.std_tokens <= 0:
            values = np.full(n, self.mean_tokens)
        else:
            mu, sigma = _lognormal_params(self)
            values = rng.lognormal(mu, sigma, n)
        return np.clip(np.rint(values), self.min_tokens, self.max_tokens).astype(np.int64)


@functools.lru_cache(maxsize=256)
def _lognormal_params(dist: LengthDistribution) -> tuple[float, float]:
    """(mu, sigma) of the log-normal whose draws clipped to [min, max] have mean mean_tokens."""
    sigma = math.sqrt(math.log(1.0 + (dist.std_tokens / dist.mean_tokens) ** 2))
    mu = math.log(dist.mean_tokens) - sigma**2 / 2.0
    z = np.random.default_rng(12345).standard_normal(20000)
    for _ in range(20):
        mean = np.clip(np.exp(mu + sigma * z), dist.min_tokens, dist.max_tokens).mean()
        if abs(mean - dist.mean_tokens) < 0.05:
            break
        mu += math.log(dist.mean_tokens / mean)
    return mu, sigma


SHAREGPT_PROMPT = LengthDistribution(mean_tokens=222.0, std_tokens=200.0, min_tokens=4,
                                     max_tokens=1024)
SHAREGPT_OUTPUT = LengthDistribution(mean_tokens=200.0, std_tokens=180.0, min_tokens=1,
                                     max_tokens=1024)


@dataclass(frozen=True)
class AdapterSpec:
    """One LoRA adapter (one NPC persona): its rank, its Poisson request rate (req/s) and the
    lengths of its prompts and requested outputs (tokens)."""

    adapter_id: str
    rank: int
    rate_req_s: float
    prompt: LengthDistribution = SHAREGPT_PROMPT
    output: LengthDistribution = SHAREGPT_OUTPUT

    @property
    def token_rate_tok_s(self) -> float:
        """Offered load in tokens/s (prompt + requested output), the FFD sort key."""
        return self.rate_req_s * (self.prompt.mean_tokens + self.output.mean_tokens)


@dataclass(frozen=True)
class BaseModelSpec:
    """The base model every adapter shares: size (billions of parameters), layers, hidden size."""

    name: str
    params_billion: float
    num_layers: int
    hidden_size: int


@dataclass(frozen=True)
class GpuSpec:
    """One GPU of the fleet: its name and total memory (GiB, 2^30 bytes)."""

    name: str
    memory_gib: float


@dataclass(frozen=True)
class WorkloadSpec:
    """A whole fleet workload: base model, GPU type, and the adapters to host."""

    name: str
    base_model: BaseModelSpec
    gpu: GpuSpec
    adapters: tuple[AdapterSpec, ...]

    @property
    def total_rate_req_s(self) -> float:
        return float(sum(a.rate_req_s for a in self.adapters))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in the file format (round-trips through `workload_from_dict`)."""
        return {
            "name": self.name,
            "base_model": asdict(self.base_model),
            "gpu": asdict(self.gpu),
            "adapters": [
                {"id": a.adapter_id, "rank": a.rank, "rate_req_s": a.rate_req_s,
                 "prompt_tokens": _length_to_dict(a.prompt),
                 "output_tokens": _length_to_dict(a.output)}
                for a in self.adapters
            ],
        }


QWEN25_7B = BaseModelSpec(name="qwen-2.5-7b-instruct", params_billion=7.6, num_layers=28,
                          hidden_size=3584)
H100_64GB = GpuSpec(name="h100-64gb", memory_gib=63.43)


def _length_to_dict(dist: LengthDistribution) -> dict[str, float]:
    return {"mean": dist.mean_tokens, "std": dist.std_tokens, "min": dist.min_tokens,
            "max": dist.max_tokens}


def _require(mapping: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(mapping, dict):
        raise WorkloadSpecError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    if key not in mapping:
        raise WorkloadSpecError(f"{where}: missing field '{key}'")
    return mapping[key]


def _number(value: Any, where: str, *, positive: bool = True, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WorkloadSpecError(f"{where}: expected a number, got {value!r}")
    if positive and (value < 0 or (value == 0 and not allow_zero)):
        bound = "zero or more" if allow_zero else "greater than zero"
        raise WorkloadSpecError(f"{where}: must be {bound}, got {value!r}")
    return float(value)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise WorkloadSpecError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _length(data: Any, where: str, default: LengthDistribution) -> LengthDistribution:
    if data is None:
        return default
    if not isinstance(data, dict):
        raise WorkloadSpecError(f"{where}: expected a mapping with 'mean' and 'std' (tokens)")
    mean = _number(_require(data, "mean", where), f"{where}.mean")
    std = _number(data.get("std", default.std_tokens), f"{where}.std", allow_zero=True)
    lo = _integer(data.get("min", default.min_tokens), f"{where}.min")
    hi = _integer(data.get("max", default.max_tokens), f"{where}.max")
    if not lo <= mean <= hi:
        raise WorkloadSpecError(f"{where}: mean {mean} must lie within min {lo} and max {hi}")
    return LengthDistribution(mean_tokens=mean, std_tokens=std, min_tokens=lo, max_tokens=hi)


def workload_from_dict(data: Any) -> WorkloadSpec:
    """Validates a parsed workload file and builds the spec; raises WorkloadSpecError."""
    if not isinstance(data, dict):
        raise WorkloadSpecError("workload: the file must hold a mapping at the top level")
    name = str(data.get("name", "workload"))
    bm = _require(data, "base_model", "workload")
    base = BaseModelSpec(
        name=str(_require(bm, "name", "base_model")),
        params_billion=_number(_require(bm, "params_billion", "base_model"),
                               "base_model.params_billion"),
        num_layers=_integer(_require(bm, "num_layers", "base_model"), "base_model.num_layers"),
        hidden_size=_integer(_require(bm, "hidden_size", "base_model"), "base_model.hidden_size"),
    )
    g = _require(data, "gpu", "workload")
    gpu = GpuSpec(name=str(g.get("name", "gpu")) if isinstance(g, dict) else "gpu",
                  memory_gib=_number(_require(g, "memory_gib", "gpu"), "gpu.memory_gib"))
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise WorkloadSpecError("defaults: expected a mapping")
    default_prompt = _length(defaults.get("prompt_tokens"), "defaults.prompt_tokens",
                             SHAREGPT_PROMPT)
    default_output = _length(defaults.get("output_tokens"), "defaults.output_tokens",
                             SHAREGPT_OUTPUT)
    raw_adapters = _require(data, "adapters", "workload")
    if not isinstance(raw_adapters, list) or not raw_adapters:
        raise WorkloadSpecError("adapters: expected a non-empty list of adapters")
    adapters = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_adapters):
        where = f"adapters[{i}]"
        adapter_id = str(_require(raw, "id", where))
        where = f"adapters[{i}] (id {adapter_id})"
        if adapter_id in seen:
            raise WorkloadSpecError(f"{where}: duplicate adapter id; ids must be unique")
        seen.add(adapter_id)
        rank = _integer(_require(raw, "rank", where), f"{where}.rank")
        if rank not in SUPPORTED_RANKS:
            raise WorkloadSpecError(f"{where}.rank: vLLM supports ranks {SUPPORTED_RANKS}, got "
                                    f"{rank}")
        rate = _number(_require(raw, "rate_req_s", where), f"{where}.rate_req_s")
        adapters.append(AdapterSpec(
            adapter_id=adapter_id, rank=rank, rate_req_s=rate,
            prompt=_length(raw.get("prompt_tokens"), f"{where}.prompt_tokens", default_prompt),
            output=_length(raw.get("output_tokens"), f"{where}.output_tokens", default_output),
        ))
    return WorkloadSpec(name=name, base_model=base, gpu=gpu, adapters=tuple(adapters))


def load_workload(path: str | Path) -> WorkloadSpec:
    """Reads a YAML or JSON workload file; raises WorkloadSpecError with what to fix."""
    path = Path(path)
    if not path.is_file():
        raise WorkloadSpecError(f"workload file {path} does not exist")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise WorkloadSpecError(f"workload file {path} is not valid YAML/JSON: {error}") from error
    return workload_from_dict(data)


def save_workload(spec: WorkloadSpec, path: str | Path) -> None:
    """Writes the spec as YAML (or JSON when the name ends in .json)."""
    path = Path(path)
    data = spec.to_dict()
    path.write_text(json.dumps(data, indent=1) if path.suffix == ".json"
                    else yaml.safe_dump(data, sort_keys=False))


@dataclass(frozen=True)
class SyntheticWorkloadConfig:
    """Recipe for a synthetic workload: n adapters, total offered rate (req/s) spread by Zipf
    popularity (exponent zipf_s; 0 = uniform), ranks drawn from rank_weights."""

    n_adapters: int
    total_rate_req_s: float
    zipf_s: float = 1.0
    rank_weights: dict[int, float] = field(default_factory=lambda: {8: 0.5, 16: 0.3, 32: 0.2})
    seed: int = 0


def synthetic_workload(name: str, config: SyntheticWorkloadConfig,
                       base_model: BaseModelSpec = QWEN25_7B,
                       gpu: GpuSpec = H100_64GB) -> WorkloadSpec:
    """Builds a workload of NPC adapters with Zipf popularity and a mix of ranks."""
    if config.n_adapters <= 0 or config.total_rate_req_s <= 0:
        raise WorkloadSpecError("synthetic workload: n_adapters and total_rate_req_s must be > 0")
    rng = np.random.default_rng(config.seed)
    popularity = 1.0 / np.arange(1, config.n_adapters + 1) ** config.zipf_s
    rng.shuffle(popularity)
    rates = config.total_rate_req_s * popularity / popularity.sum()
    ranks = list(config.rank_weights)
    weights = np.array([config.rank_weights[r] for r in ranks], dtype=float)
    drawn = rng.choice(ranks, size=config.n_adapters, p=weights / weights.sum())
    adapters = tuple(
        AdapterSpec(adapter_id=f"{name}_npc{i:04d}", rank=int(drawn[i]),
                    rate_req_s=max(float(round(rates[i], 6)), 1e-6))
        for i in range(config.n_adapters)
    )
    return WorkloadSpec(name=name, base_model=base_model, gpu=gpu, adapters=adapters)
