"""Workload and cluster specs of the fleet planner: dataclasses, strict validation, synthetic
generators.

A workload file (YAML or JSON) is what a studio writes about its NPCs:

    name: my_game
    base_model: qwen-2.5-7b-instruct           # needs a calibration on the cluster's GPU
    max_model_len: 4096                        # vLLM --max-model-len (tokens)
    latency_targets: {ttft_ms: {p99: 2000}, itl_ms: {p99: 150}}
    defaults: {prompt_tokens: {mean: 222, std: 200}, output_tokens: {mean: 200, std: 180}}
    adapters:
      - {id: npc_0, rank: 8, rate_req_s: 0.1}
      - {id: npc_1, rank: 16, rate_req_s: 0.05, prompt_tokens: {mean: 300, std: 100}}

A cluster file says where the plan runs:

    name: studio_eu
    gpu: h100-64gb                             # needs a calibration with the base model
    namespace: npc-llm
    nodes: [{name: gpu-node-a, gpus: 8}, {name: gpu-node-b, gpus: 8}]
    adapter_storage: {kind: pvc, claim_name: npc-adapters, mount_path: /adapters}

Every problem, unknown keys included, is a `WorkloadSpecError` naming the field and what to fix.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lego_embed.errors import WorkloadSpecError

TARGET_PERCENTILES = (50, 90, 95, 99)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


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
class LatencyTargets:
    """Latency targets per GPU: time to first token and inter-token latency (ms) at percentiles
    of TARGET_PERCENTILES, e.g. ttft_ms={99: 2000.0}. Empty = no target."""

    ttft_ms: dict[int, float] = field(default_factory=dict)
    itl_ms: dict[int, float] = field(default_factory=dict)

    def items(self) -> list[tuple[str, int, float]]:
        """(metric 'ttft'|'itl', percentile, target ms), in a fixed order."""
        return [("ttft", q, v) for q, v in sorted(self.ttft_ms.items())] + \
            [("itl", q, v) for q, v in sorted(self.itl_ms.items())]

    def __bool__(self) -> bool:
        return bool(self.ttft_ms or self.itl_ms)

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {name: {f"p{q}": v for q, v in sorted(table.items())}
                for name, table in (("ttft_ms", self.ttft_ms), ("itl_ms", self.itl_ms)) if table}


@dataclass(frozen=True)
class WorkloadSpec:
    """A whole fleet workload: base model (the name of a calibrated model), vLLM's
    --max-model-len (tokens), latency targets and the adapters to host."""

    name: str
    base_model: str
    adapters: tuple[AdapterSpec, ...]
    max_model_len: int = 32768
    targets: LatencyTargets = field(default_factory=LatencyTargets)

    @property
    def total_rate_req_s(self) -> float:
        return float(sum(a.rate_req_s for a in self.adapters))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in the file format (round-trips through `workload_from_dict`)."""
        data: dict[str, Any] = {"name": self.name, "base_model": self.base_model,
                                "max_model_len": self.max_model_len}
        if self.targets:
            data["latency_targets"] = self.targets.to_dict()
        data["adapters"] = [
            {"id": a.adapter_id, "rank": a.rank, "rate_req_s": a.rate_req_s,
             "prompt_tokens": _length_to_dict(a.prompt),
             "output_tokens": _length_to_dict(a.output)}
            for a in self.adapters]
        return data


@dataclass(frozen=True)
class StorageSpec:
    """Where the cluster keeps files mounted into the vLLM pods: a PersistentVolumeClaim
    (`claim_name`), a node directory (`host_path`) or an NFS export (`server`, `path`), mounted
    at `mount_path` (absolute)."""

    kind: str
    mount_path: str
    claim_name: str = ""
    host_path: str = ""
    server: str = ""
    path: str = ""


@dataclass(frozen=True)
class NodeSpec:
    """One cluster node: its Kubernetes node name and how many GPUs it has."""

    name: str
    gpus: int


@dataclass(frozen=True)
class ClusterSpec:
    """Where a plan runs: GPU type (the name of a calibrated GPU), Kubernetes namespace, nodes,
    where the adapter folders are (`adapter_storage`) and, optionally, a cache for the base
    model's weights (`model_cache`)."""

    name: str
    gpu: str
    namespace: str
    nodes: tuple[NodeSpec, ...]
    adapter_storage: StorageSpec
    model_cache: StorageSpec | None = None

    @property
    def total_gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    def gpu_slots(self) -> list[tuple[str, int]]:
        """(node name, GPU index on that node) for every GPU, node by node."""
        return [(n.name, i) for n in self.nodes for i in range(n.gpus)]


def _length_to_dict(dist: LengthDistribution) -> dict[str, float]:
    return {"mean": dist.mean_tokens, "std": dist.std_tokens, "min": dist.min_tokens,
            "max": dist.max_tokens}


def _mapping(data: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """`data` as a mapping whose keys are all in `allowed`; an unknown key is an error naming
    it (with the closest allowed key)."""
    if not isinstance(data, dict):
        raise WorkloadSpecError(f"{where}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise WorkloadSpecError(f"{where}: unknown key '{key}' (allowed: "
                                    f"{', '.join(allowed)}){hint}")
    return data


def _require(mapping: dict[str, Any], key: str, where: str) -> Any:
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


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise WorkloadSpecError(f"{where}: expected a non-empty name, got {value!r}")
    return value


def _length(data: Any, where: str, default: LengthDistribution) -> LengthDistribution:
    if data is None:
        return default
    data = _mapping(data, where, ("mean", "std", "min", "max"))
    mean = _number(_require(data, "mean", where), f"{where}.mean")
    std = _number(data.get("std", default.std_tokens), f"{where}.std", allow_zero=True)
    lo = _integer(data.get("min", default.min_tokens), f"{where}.min")
    hi = _integer(data.get("max", default.max_tokens), f"{where}.max")
    if not lo <= mean <= hi:
        raise WorkloadSpecError(f"{where}: mean {mean} must lie within min {lo} and max {hi}")
    return LengthDistribution(mean_tokens=mean, std_tokens=std, min_tokens=lo, max_tokens=hi)


def _targets(data: Any) -> LatencyTargets:
    if data is None:
        return LatencyTargets()
    data = _mapping(data, "latency_targets", ("ttft_ms", "itl_ms"))
    tables: dict[str, dict[int, float]] = {}
    keys = tuple(f"p{q}" for q in TARGET_PERCENTILES)
    for metric in ("ttft_ms", "itl_ms"):
        where = f"latency_targets.{metric}"
        raw = _mapping(data.get(metric) or {}, where, keys)
        tables[metric] = {int(k[1:]): _number(v, f"{where}.{k}") for k, v in raw.items()}
    return LatencyTargets(ttft_ms=tables["ttft_ms"], itl_ms=tables["itl_ms"])


WORKLOAD_KEYS = ("name", "base_model", "max_model_len", "latency_targets", "defaults", "adapters")
ADAPTER_KEYS = ("id", "rank", "rate_req_s", "prompt_tokens", "output_tokens")


def workload_from_dict(data: Any) -> WorkloadSpec:
    """Validates a parsed workload file and builds the spec; raises WorkloadSpecError."""
    if not isinstance(data, dict):
        raise WorkloadSpecError("workload: the file must hold a mapping at the top level")
    data = _mapping(data, "workload", WORKLOAD_KEYS)
    name = str(data.get("name", "workload"))
    base_model = _require(data, "base_model", "workload")
    if not isinstance(base_model, str) or not base_model.strip():
        raise WorkloadSpecError("base_model: give the base model's name as a string, e.g. "
                                "'qwen-2.5-7b-instruct'; its size and shape come from its "
                                "calibration file (`lego-embed fleet calibrate`)")
    max_model_len = _integer(data.get("max_model_len", 32768), "max_model_len")
    defaults = _mapping(data.get("defaults") or {}, "defaults", ("prompt_tokens", "output_tokens"))
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
        raw = _mapping(raw, where, ADAPTER_KEYS)
        adapter_id = str(_require(raw, "id", where))
        where = f"adapters[{i}] (id {adapter_id})"
        if adapter_id in seen:
            raise WorkloadSpecError(f"{where}: duplicate adapter id; ids must be unique")
        if not DNS_LABEL.match(adapter_id.replace("_", "-").lower()) or len(adapter_id) > 63:
            raise WorkloadSpecError(f"{where}: ids are file and model names: use letters, "
                                    "digits, '-' and '_' (at most 63 characters)")
        seen.add(adapter_id)
        rank = _integer(_require(raw, "rank", where), f"{where}.rank")
        rate = _number(_require(raw, "rate_req_s", where), f"{where}.rate_req_s")
        prompt = _length(raw.get("prompt_tokens"), f"{where}.prompt_tokens", default_prompt)
        output = _length(raw.get("output_tokens"), f"{where}.output_tokens", default_output)
        if prompt.max_tokens + output.max_tokens > max_model_len:
            raise WorkloadSpecError(
                f"{where}: prompt max {prompt.max_tokens} + output max {output.max_tokens} "
                f"tokens exceed max_model_len {max_model_len}; vLLM rejects such requests: "
                "raise max_model_len or lower the max lengths")
        adapters.append(AdapterSpec(adapter_id=adapter_id, rank=rank, rate_req_s=rate,
                                    prompt=prompt, output=output))
    return WorkloadSpec(name=name, base_model=base_model, adapters=tuple(adapters),
                        max_model_len=max_model_len, targets=_targets(data.get("latency_targets")))


def _storage(data: Any, where: str) -> StorageSpec:
    data = _mapping(data, where, ("kind", "mount_path", "claim_name", "host_path", "server",
                                  "path"))
    kind = _require(data, "kind", where)
    needs = {"pvc": ("claim_name",), "host_path": ("host_path",), "nfs": ("server", "path")}
    if kind not in needs:
        raise WorkloadSpecError(f"{where}.kind: one of {', '.join(needs)}, got {kind!r}")
    for key in needs[kind]:
        _name(_require(data, key, where), f"{where}.{key}")
    extra = [k for k in ("claim_name", "host_path", "server", "path")
             if k in data and k not in needs[kind]]
    if extra:
        raise WorkloadSpecError(f"{where}: '{extra[0]}' does not apply to kind {kind}")
    mount = str(data.get("mount_path", "/adapters"))
    if not mount.startswith("/"):
        raise WorkloadSpecError(f"{where}.mount_path: must be an absolute path, got {mount!r}")
    return StorageSpec(kind=kind, mount_path=mount.rstrip("/") or "/",
                       **{k: str(data[k]) for k in needs[kind]})


CLUSTER_KEYS = ("name", "gpu", "namespace", "nodes", "adapter_storage", "model_cache")


def cluster_from_dict(data: Any) -> ClusterSpec:
    """Validates a parsed cluster file and builds the spec; raises WorkloadSpecError."""
    if not isinstance(data, dict):
        raise WorkloadSpecError("cluster: the file must hold a mapping at the top level")
    data = _mapping(data, "cluster", CLUSTER_KEYS)
    gpu = _require(data, "gpu", "cluster")
    if not isinstance(gpu, str) or not gpu.strip():
        raise WorkloadSpecError("cluster.gpu: give the GPU type's name as a string, e.g. "
                                "'h100-64gb'; its memory and speed come from its calibration")
    namespace = str(data.get("namespace", "default"))
    if not DNS_LABEL.match(namespace):
        raise WorkloadSpecError(f"cluster.namespace: {namespace!r} is not a Kubernetes name "
                                "(lower-case letters, digits and '-')")
    raw_nodes = _require(data, "nodes", "cluster")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise WorkloadSpecError("cluster.nodes: expected a non-empty list of {name, gpus}")
    nodes = []
    for i, raw in enumerate(raw_nodes):
        where = f"cluster.nodes[{i}]"
        raw = _mapping(raw, where, ("name", "gpus"))
        nodes.append(NodeSpec(name=_name(_require(raw, "name", where), f"{where}.name"),
                              gpus=_integer(_require(raw, "gpus", where), f"{where}.gpus")))
    if len({n.name for n in nodes}) != len(nodes):
        raise WorkloadSpecError("cluster.nodes: node names must be unique")
    cache = data.get("model_cache")
    return ClusterSpec(
        name=str(data.get("name", "cluster")), gpu=gpu, namespace=namespace, nodes=tuple(nodes),
        adapter_storage=_storage(_require(data, "adapter_storage", "cluster"),
                                 "cluster.adapter_storage"),
        model_cache=None if cache is None else _storage(cache, "cluster.model_cache"))


def _read(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise WorkloadSpecError(f"{what} file {path} does not exist")
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise WorkloadSpecError(f"{what} file {path} is not valid YAML/JSON: {error}") from error


def load_workload(path: str | Path) -> WorkloadSpec:
    """Reads a YAML or JSON workload file; raises WorkloadSpecError with what to fix."""
    return workload_from_dict(_read(path, "workload"))


def load_cluster(path: str | Path) -> ClusterSpec:
    """Reads a YAML or JSON cluster file; raises WorkloadSpecError with what to fix."""
    return cluster_from_dict(_read(path, "cluster"))


def save_workload(spec: WorkloadSpec, path: str | Path) -> None:
    """Writes the spec as YAML (or JSON when the name ends in .json)."""
    path = Path(path)
    data = spec.to_dict()
    path.write_text(json.dumps(data, indent=1) if path.suffix == ".json"
                    else yaml.safe_dump(data, sort_keys=False))


QWEN25_7B = "qwen-2.5-7b-instruct"


@dataclass(frozen=True)
class SyntheticWorkloadConfig:
    """Recipe for a synthetic workload: n adapters, total offered rate (req/s) spread by Zipf
    popularity (exponent zipf_s; 0 = uniform), ranks drawn from rank_weights."""

    n_adapters: int
    total_rate_req_s: float
    zipf_s: float = 1.0
    rank_weights: dict[int, float] = field(default_factory=lambda: {8: 0.5, 16: 0.3, 32: 0.2})
    seed: int = 0
    max_model_len: int = 4096


def synthetic_workload(name: str, config: SyntheticWorkloadConfig,
                       base_model: str = QWEN25_7B,
                       targets: LatencyTargets | None = None) -> WorkloadSpec:
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
    return WorkloadSpec(name=name, base_model=base_model, adapters=adapters,
                        max_model_len=config.max_model_len,
                        targets=targets or LatencyTargets())
