"""ML surrogate of the twin: dataset generation in the twin, teacher models (scikit-learn), and
their distillation into one small decision tree per target that runs in microseconds.

Targets, per instance configuration (one GPU, its adapters, its max_loras):
- throughput: the fraction of the offered token load the instance serves (throughput / ideal);
  the sustained throughput in tokens/s is that fraction times the offered load;
- starvation: the twin's starvation flag (1 - throughput / ideal >= 0.10, or a memory error);
- latency: log10 of the twin's TTFT and ITL percentiles (ms), one tree each (LATENCY_KEYS).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lego_embed.errors import CalibrationError
from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.spec import AdapterSpec, LengthDistribution
from lego_embed.fleet.twin import PERCENTILES, InstanceConfig, TwinResult, simulate

LATENCY_KEYS = tuple((metric, q) for metric in ("ttft", "itl") for q in PERCENTILES)
MAX_LORAS_CHOICES = (8, 16, 32, 64, 96, 128, 192, 256, 320, 384)
FEATURES = (
    "n_adapters", "max_loras", "max_lora_rank", "kv_cache_ktokens", "offered_req_s",
    "offered_ktok_s", "mean_prompt_tokens", "mean_output_tokens", "share_rank8", "share_rank16",
    "share_rank32", "top_adapter_share", "adapters_per_slot", "rate_per_slot",
)


def instance_features(adapters: Sequence[AdapterSpec], max_loras: int,
                      calibration: Calibration) -> np.ndarray:
    """The surrogate's feature vector (order of FEATURES) for adapters on one instance."""
    rates = np.array([a.rate_req_s for a in adapters], dtype=float)
    total = float(rates.sum())
    prompt = float(np.dot(rates, [a.prompt.mean_tokens for a in adapters]) / total)
    output = float(np.dot(rates, [a.output.mean_tokens for a in adapters]) / total)
    ranks = np.array([a.rank for a in adapters])
    max_rank = int(ranks.max())
    kv = calibration.memory.kv_cache_tokens(max_loras, max_rank)
    n = len(adapters)
    return np.array([
        n, max_loras, max_rank, kv / 1000.0, total, total * (prompt + output) / 1000.0, prompt,
        output, rates[ranks == 8].sum() / total, rates[ranks == 16].sum() / total,
        rates[ranks >= 32].sum() / total, rates.max() / total, n / max_loras,
        total / min(max_loras, n),
    ])


@dataclass(frozen=True)
class SmallTree:
    """A fitted decision tree as plain arrays (JSON-serialisable, no pickle), walked in Python."""

    left: tuple[int, ...]
    right: tuple[int, ...]
    feature: tuple[int, ...]
    threshold: tuple[float, ...]
    value: tuple[float, ...]

    @classmethod
    def from_sklearn(cls, tree: Any, class_index: int | None = None) -> SmallTree:
        t = tree.tree_
        values = t.value[:, 0, :]
        if class_index is None:
            leaf = values[:, 0]
        else:
            leaf = values[:, class_index] / np.maximum(values.sum(axis=1), 1e-12)
        return cls(left=tuple(int(x) for x in t.children_left),
                   right=tuple(int(x) for x in t.children_right),
                   feature=tuple(int(x) for x in t.feature),
                   threshold=tuple(float(x) for x in t.threshold),
                   value=tuple(float(x) for x in leaf))

    def predict_one(self, x: Sequence[float]) -> float:
        node = 0
        left, right, feature, threshold = self.left, self.right, self.feature, self.threshold
        while left[node] != -1:
            node = left[node] if x[feature[node]] <= threshold[node] else right[node]
        return self.value[node]

    @property
    def depth(self) -> int:
        def walk(node: int) -> int:
            if self.left[node] == -1:
                return 0
            return 1 + max(walk(self.left[node]), walk(self.right[node]))
        return walk(0)

    def to_dict(self) -> dict[str, list]:
        return {"left": list(self.left), "right": list(self.right), "feature": list(self.feature),
                "threshold": list(self.threshold), "value": list(self.value)}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> SmallTree:
        return cls(**{k: tuple(v) for k, v in data.items()})


@dataclass(frozen=True)
class Prediction:
    """Surrogate output for one instance: served fraction of the offered load, sustained
    throughput (tokens/s), starvation probability and verdict, and latency percentiles (ms)
    keyed like LATENCY_KEYS."""

    served_fraction: float
    throughput_tok_s: float
    starvation_probability: float
    latency_ms: dict[tuple[str, int], float]

    @property
    def starved(self) -> bool:
        return self.starvation_probability >= 0.5 or self.served_fraction < 0.9


@dataclass(frozen=True)
class Surrogate:
    """The distilled surrogate: one small tree per target, plus its held-out metrics."""

    throughput_tree: SmallTree
    starvation_tree: SmallTree
    latency_trees: dict[tuple[str, int], SmallTree]
    metrics: dict[str, float]

    def predict(self, adapters: Sequence[AdapterSpec], max_loras: int,
                calibration: Calibration) -> Prediction:
        max_rank = max(a.rank for a in adapters)
        if not calibration.memory.fits(max_loras, max_rank):
            return Prediction(0.0, 0.0, 1.0, {k: float("inf") for k in LATENCY_KEYS})
        x = instance_features(adapters, max_loras, calibration)
        return self.predict_features(x)

    def predict_features(self, x: Sequence[float]) -> Prediction:
        fraction = min(1.0, max(0.0, self.throughput_tree.predict_one(x)))
        offered_tok_s = x[FEATURES.index("offered_ktok_s")] * 1000.0
        latency = {k: float(10.0 ** tree.predict_one(x)) for k, tree in self.latency_trees.items()}
        return Prediction(fraction, fraction * offered_tok_s, self.starvation_tree.predict_one(x),
                          latency)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({
            "features": list(FEATURES), "metrics": self.metrics,
            "throughput_tree": self.throughput_tree.to_dict(),
            "starvation_tree": self.starvation_tree.to_dict(),
            "latency_trees": {f"{m}_p{q}": t.to_dict()
                              for (m, q), t in self.latency_trees.items()}}) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Surrogate:
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"surrogate file {path} does not exist; train one with "
                                   "`lego-embed fleet train`")
        try:
            data = json.loads(path.read_text())
            if tuple(data["features"]) != FEATURES:
                raise CalibrationError(f"surrogate {path} was trained on other features; "
                                       "retrain it with `lego-embed fleet train`")
            latency = {(m, q): SmallTree.from_dict(data["latency_trees"][f"{m}_p{q}"])
                       for m, q in LATENCY_KEYS}
            return cls(SmallTree.from_dict(data["throughput_tree"]),
                       SmallTree.from_dict(data["starvation_tree"]), latency, data["metrics"])
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise CalibrationError(f"surrogate file {path} is malformed ({error!r})") from error


@dataclass(frozen=True)
class DatasetConfig:
    """How many twin samples, the simulated horizon per sample (s) and the seed."""

    n_samples: int = 1200
    duration_s: float = 900.0
    seed: int = 0


def sample_instance(rng: np.random.Generator,
                    calibration: Calibration) -> tuple[list[AdapterSpec], int]:
    """One random instance configuration: adapter count, Zipf-skewed rates, a rank mix, length
    means and a max_loras that fits GPU memory, spanning light load to heavy overload (memory
    errors need no surrogate: the memory model answers them exactly)."""
    n = int(np.clip(np.rint(np.exp(rng.uniform(np.log(1), np.log(400)))), 1, 400))
    total_rate = float(np.exp(rng.uniform(np.log(0.3), np.log(70.0))))
    skew = rng.choice([0.0, 0.5, 1.0, 1.5])
    popularity = 1.0 / np.arange(1, n + 1) ** skew
    rates = total_rate * popularity / popularity.sum()
    mix = rng.dirichlet([1.0, 1.0, 1.0])
    ranks = rng.choice([8, 16, 32], size=n, p=mix)
    prompt = LengthDistribution(float(rng.uniform(120, 350)), 200.0, 4, 1024)
    output = LengthDistribution(float(rng.uniform(100, 300)), 180.0, 1, 1024)
    adapters = [AdapterSpec(f"s{i}", int(ranks[i]), float(rates[i]), prompt, output)
                for i in range(n)]
    max_rank = int(ranks.max())
    fitting = [m for m in MAX_LORAS_CHOICES if calibration.memory.fits(m, max_rank)]
    max_loras = int(rng.choice(fitting))
    return adapters, max_loras


def _sample_row(index: int, config: DatasetConfig, calibration: Calibration) -> dict[str, Any]:
    rng = np.random.default_rng([config.seed, index])
    adapters, max_loras = sample_instance(rng, calibration)
    x = instance_features(adapters, max_loras, calibration)
    instance = InstanceConfig(max_loras=max_loras, max_cpu_loras=len(adapters),
                              max_lora_rank=max(a.rank for a in adapters))
    result = simulate(adapters, instance, calibration, duration_s=config.duration_s,
                      seed=index)
    return {"index": index, "features": [float(v) for v in x],
            "served_fraction": 0.0 if result.memory_error else result.throughput_to_ideal,
            "throughput_tok_s": result.total_throughput_tok_s,
            "ideal_tok_s": result.ideal_throughput_tok_s,
            "starved": bool(result.starved), "memory_error": result.memory_error,
            "log10_latency_ms": _log_latency(result, config.duration_s)}


def _log_latency(result: TwinResult, duration_s: float) -> list[float]:
    """log10 ms of the LATENCY_KEYS percentiles; with nothing completed, the whole horizon."""
    return [float(np.log10(max(result.latency_ms(m, q) if result.completed else
                               duration_s * 1000.0, 1e-3)))
            for m, q in LATENCY_KEYS]


def generate_dataset(path: str | Path, config: DatasetConfig, calibration: Calibration,
                     workers: int = 1, progress: bool = True) -> int:
    """Appends twin samples to a JSONL file, skipping indices already there (resumable).
    Returns the number of rows in the file."""
    from tqdm import tqdm

    path = Path(path)
    done: set[int] = set()
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                done.add(int(json.loads(line)["index"]))
    todo = [i for i in range(config.n_samples) if i not in done]
    bar = tqdm(total=config.n_samples, initial=config.n_samples - len(todo), disable=not progress,
               desc="twin samples", unit="sample")
    with path.open("a") as handle:
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers) as pool:
                rows = pool.map(_sample_row, todo, [config] * len(todo),
                                [calibration] * len(todo), chunksize=4)
                for row in rows:
                    handle.write(json.dumps(row) + "\n")
                    handle.flush()
                    bar.update(1)
        else:
            for i in todo:
                handle.write(json.dumps(_sample_row(i, config, calibration)) + "\n")
                handle.flush()
                bar.update(1)
    bar.close()
    return len(done) + len(todo)


def load_dataset(path: str | Path
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features, served_fraction, starved, ideal_tok_s, log10 latency ms) arrays from a dataset
    file, without memory-error rows (Surrogate.predict answers those from the memory model)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"dataset {path} does not exist; make it with "
                               "`lego-embed fleet dataset`")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(rows) < 20:
        raise CalibrationError(f"dataset {path} has {len(rows)} rows; need at least 20")
    rows.sort(key=lambda r: r["index"])
    rows = [r for r in rows if not r["memory_error"]]
    x = np.array([r["features"] for r in rows], dtype=float)
    y = np.array([r["served_fraction"] for r in rows], dtype=float)
    starved = np.array([r["starved"] for r in rows], dtype=bool)
    ideal = np.array([r["ideal_tok_s"] for r in rows], dtype=float)
    if any("log10_latency_ms" not in r for r in rows):
        raise CalibrationError(f"dataset {path} has no latency columns; regenerate it with "
                               "`lego-embed fleet dataset`")
    latency = np.array([r["log10_latency_ms"] for r in rows], dtype=float)
    return x, y, starved, ideal, latency


def smape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Symmetric MAPE as a fraction: mean(|p - a| / ((|a| + |p|) / 2))."""
    denominator = (np.abs(actual) + np.abs(predicted)) / 2.0
    ok = denominator > 0
    return float(np.mean(np.abs(predicted[ok] - actual[ok]) / denominator[ok]))


def train_surrogate(dataset_path: str | Path, max_depth: int = 10, test_fraction: float = 0.2,
                    seed: int = 0, n_trees: int = 200,
                    log: Callable[[str], None] | None = None) -> Surrogate:
    """Trains teacher forests, distils them into small trees, reports held-out accuracy."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.metrics import f1_score
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    x, y, starved, ideal, latency = load_dataset(dataset_path)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = max(1, int(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    teacher_reg = RandomForestRegressor(n_estimators=n_trees, min_samples_leaf=2,
                                        random_state=seed, n_jobs=1).fit(x[train], y[train])
    teacher_cls = RandomForestClassifier(n_estimators=n_trees, min_samples_leaf=1,
                                         random_state=seed, n_jobs=1).fit(x[train],
                                                                          starved[train])
    # Distillation set: the training rows plus jittered copies, labelled by the teachers.
    rng = np.random.default_rng(seed + 1)
    jitter = x[train] * rng.normal(1.0, 0.05, size=(4,) + x[train].shape)
    x_distil = np.concatenate([x[train], jitter.reshape(-1, x.shape[1])])
    student_reg = DecisionTreeRegressor(max_depth=max_depth, min_samples_leaf=3,
                                        random_state=seed).fit(
        x_distil, teacher_reg.predict(x_distil))
    student_cls = DecisionTreeClassifier(max_depth=max_depth, min_samples_leaf=3,
                                         random_state=seed).fit(
        x_distil, teacher_cls.predict(x_distil))
    reg_tree = SmallTree.from_sklearn(student_reg)
    cls_index = int(np.flatnonzero(student_cls.classes_ == 1)[0]) \
        if 1 in student_cls.classes_ else 0
    cls_tree = SmallTree.from_sklearn(student_cls, class_index=cls_index)
    teacher_lat = RandomForestRegressor(n_estimators=n_trees, min_samples_leaf=2,
                                        random_state=seed, n_jobs=1).fit(x[train],
                                                                         latency[train])
    labels = teacher_lat.predict(x_distil).reshape(len(x_distil), -1)
    latency_trees = {key: SmallTree.from_sklearn(DecisionTreeRegressor(
        max_depth=max_depth, min_samples_leaf=3, random_state=seed).fit(x_distil, labels[:, k]))
        for k, key in enumerate(LATENCY_KEYS)}
    surrogate = Surrogate(reg_tree, cls_tree, latency_trees, {})
    predictions = [surrogate.predict_features(row) for row in x[test]]
    tp_pred = np.array([p.served_fraction for p in predictions]) * ideal[test]
    tp_true = y[test] * ideal[test]
    st_pred = np.array([p.starvation_probability >= 0.5 for p in predictions])
    start = time.perf_counter()
    repeats = 5000
    for i in range(repeats):
        surrogate.predict_features(x[test[i % len(test)]])
    inference_ms = (time.perf_counter() - start) * 1000.0 / repeats
    teacher_tp = teacher_reg.predict(x[test]) * ideal[test]
    predicted_latency = np.array([[p.latency_ms[k] for k in LATENCY_KEYS] for p in predictions])
    latency_error = {f"{m}_p{q}_smape": smape(10.0 ** latency[test, k], predicted_latency[:, k])
                     for k, (m, q) in enumerate(LATENCY_KEYS)}
    metrics = {
        **latency_error,
        "throughput_smape": smape(tp_true, tp_pred),
        "starvation_f1": float(f1_score(starved[test], st_pred, average="macro")),
        "inference_ms": inference_ms,
        "teacher_throughput_smape": smape(tp_true, teacher_tp),
        "teacher_starvation_f1": float(f1_score(starved[test], teacher_cls.predict(x[test]),
                                                average="macro")),
        "n_train": int(len(train)), "n_test": int(len(test)),
        "throughput_tree_depth": reg_tree.depth, "starvation_tree_depth": cls_tree.depth,
    }
    if log is not None:
        log(json.dumps(metrics))
    return Surrogate(reg_tree, cls_tree, latency_trees, metrics)
