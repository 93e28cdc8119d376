"""Placement of adapters on the fewest GPUs: first-fit decreasing driven by the surrogate,
verified and repaired in the twin; baselines (memory only, fixed adapters per GPU) and the exact
minimum by exhaustive search on tiny instances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from lego_embed.errors import WorkloadSpecError
from lego_embed.fleet.calibration import Calibration
from lego_embed.fleet.spec import AdapterSpec, LatencyTargets, WorkloadSpec
from lego_embed.fleet.surrogate import MAX_LORAS_CHOICES, Surrogate
from lego_embed.fleet.twin import STARVATION_THRESHOLD, InstanceConfig, TwinResult, simulate
from lego_embed.fleet.vllm_rules import VLLM_RULES, VllmRules

Feasibility = Callable[[Sequence[AdapterSpec]], "int | None"]
"""The max_loras under which adapters can share a GPU, or None. A feasibility with a `fits`
method (adapters, max_loras) -> bool also answers for a running GPU's fixed max_loras."""
DEFAULT_RULES = VLLM_RULES["0.8.5"]


@dataclass
class GpuAssignment:
    """One GPU (one vLLM instance): its adapters (a replica of a hot adapter carries its share
    of the adapter's rate) and launch settings. `name`/`node` place it on the cluster;
    `fixed_max_lora_rank`/`fixed_max_cpu_loras` (0 = derived) keep a running instance's flags
    across re-plans so that moves need no restart."""

    adapters: list[AdapterSpec]
    max_loras: int
    name: str = ""
    node: str = ""
    fixed_max_lora_rank: int = 0
    fixed_max_cpu_loras: int = 0
    rules: VllmRules = field(default=DEFAULT_RULES, repr=False)

    @property
    def max_lora_rank(self) -> int:
        """--max-lora-rank: kept when fixed, else the smallest value the vLLM version allows
        that serves every adapter here."""
        if self.fixed_max_lora_rank:
            return self.fixed_max_lora_rank
        return self.rules.max_lora_rank_for(max(a.rank for a in self.adapters))

    @property
    def offered_tok_s(self) -> float:
        return sum(a.token_rate_tok_s for a in self.adapters)

    @property
    def max_cpu_loras(self) -> int:
        """Every adapter in the CPU cache; vLLM requires max_cpu_loras >= max_loras."""
        if self.fixed_max_cpu_loras:
            return max(self.fixed_max_cpu_loras, self.max_loras)
        return max(len(self.adapters), self.max_loras)

    def accepts(self, adapter: AdapterSpec) -> bool:
        """Whether the adapter may join: not already here (replicas go to different GPUs) and
        within a fixed --max-lora-rank."""
        if any(a.adapter_id == adapter.adapter_id for a in self.adapters):
            return False
        return not self.fixed_max_lora_rank or adapter.rank <= self.fixed_max_lora_rank

    def instance(self, gpu_memory_gib: float | None = None,
                 max_model_len: int = 32768) -> InstanceConfig:
        return InstanceConfig(max_loras=self.max_loras, max_cpu_loras=self.max_cpu_loras,
                              max_lora_rank=self.max_lora_rank, gpu_memory_gib=gpu_memory_gib,
                              max_model_len=max_model_len)


@dataclass
class Plan:
    """A placement: GPUs with their adapters; `twin` holds each GPU's verification result,
    `initial_gpus` the GPU count of the packing rule before twin repair/consolidation."""

    strategy: str
    gpus: list[GpuAssignment]
    twin: list[TwinResult] = field(default_factory=list)
    repairs: int = 0
    initial_gpus: int = 0

    @property
    def n_gpus(self) -> int:
        return len(self.gpus)

    @property
    def starving_gpus(self) -> int:
        return sum(1 for r in self.twin if r.starved)


SAFETY_MARGIN = 0.02
LATENCY_MARGIN = 0.10


@dataclass(frozen=True)
class Criterion:
    """When a GPU passes in the twin: no memory error, a served fraction at least
    `served_margin` above the starvation limit, and every latency target met with
    `latency_margin` (a fraction of the target) to spare. `keep=True` checks drop both margins:
    a re-plan keeps a running GPU that still meets the targets themselves (hysteresis)."""

    targets: LatencyTargets = field(default_factory=LatencyTargets)
    served_margin: float = SAFETY_MARGIN
    latency_margin: float = LATENCY_MARGIN

    def failures(self, result: TwinResult, keep: bool = False) -> list[str]:
        """What the GPU misses, in words (empty when it passes)."""
        if result.memory_error:
            return ["memory error: the instance cannot start (KV cache below max_model_len or "
                    "an adapter rank above --max-lora-rank)"]
        out = []
        limit = 1.0 - STARVATION_THRESHOLD + (0.0 if keep else self.served_margin)
        if result.throughput_to_ideal < limit:
            out.append(f"serves {result.throughput_to_ideal:.1%} of its offered tokens "
                       f"(needs {limit:.0%})")
        scale = 1.0 if keep else 1.0 - self.latency_margin
        for metric, q, target in self.targets.items():
            value = result.latency_ms(metric, q)
            if value > target * scale:
                out.append(f"{metric.upper()} p{q} {value:.0f} ms > target {target:.0f} ms"
                           + ("" if keep else f" less {self.latency_margin:.0%} margin"))
        return out

    def passes(self, result: TwinResult, keep: bool = False) -> bool:
        return not self.failures(result, keep)

    def slack(self, result: TwinResult, keep: bool = False) -> float:
        """The smallest ratio of (target, with its margin unless `keep`) to the twin's value
        over the latency targets (1 when there are none): below 1 the GPU misses, and the ratio
        says by how much its load has to shrink."""
        scale = 1.0 if keep else 1.0 - self.latency_margin
        ratios = [target * scale / max(result.latency_ms(m, q), 1e-9)
                  for m, q, target in self.targets.items()]
        return min(ratios, default=1.0)


def surrogate_feasibility(surrogate: Surrogate, calibration: Calibration,
                          criterion: Criterion | None = None) -> Feasibility:
    """The max_loras (from MAX_LORAS_CHOICES) under which the surrogate predicts the adapters are
    served without starvation and within the criterion's latency targets, or None. Among the
    feasible settings, the one with the most latency slack wins (the highest served fraction
    when there are no targets)."""
    criterion = criterion or Criterion()
    scale = 1.0 - criterion.latency_margin

    def predict(adapters: Sequence[AdapterSpec], max_loras: int) -> tuple[bool, float]:
        prediction = surrogate.predict(adapters, max_loras, calibration)
        slack = min((target * scale / max(prediction.latency_ms.get((m, q), float("inf")), 1e-9)
                     for m, q, target in criterion.targets.items()),
                    default=prediction.served_fraction)
        return not prediction.starved and slack >= 1.0, slack

    def feasible(adapters: Sequence[AdapterSpec]) -> int | None:
        best, best_slack = None, -1.0
        n = len(adapters)
        for max_loras in MAX_LORAS_CHOICES:
            ok, slack = predict(adapters, max_loras)
            if ok and slack > best_slack:
                best, best_slack = max_loras, slack
            if max_loras >= n:
                break
        return best

    feasible.fits = lambda adapters, max_loras: predict(adapters, max_loras)[0]  # type: ignore[attr-defined]
    return feasible


def first_fit_decreasing(adapters: Sequence[AdapterSpec], feasible: Feasibility,
                         strategy: str = "ffd", gpus: list[GpuAssignment] | None = None,
                         rules: VllmRules = DEFAULT_RULES, keep_max_loras: bool = False,
                         forbidden: frozenset[tuple[str, int]] = frozenset()) -> Plan:
    """Adapters sorted by offered load (largest first), each on the first GPU that accepts it
    and stays feasible, else on a new GPU (alone, with its own best max_loras). `gpus` are GPUs
    to fill first (a running instance's max_loras is kept when `keep_max_loras`);
    `forbidden` holds (adapter id, GPU position) pairs not to use (a GPU it was just shed
    from)."""
    gpus = gpus if gpus is not None else []
    for adapter in sorted(adapters, key=lambda a: (-a.token_rate_tok_s, a.adapter_id)):
        for position, gpu in enumerate(gpus):
            if not gpu.accepts(adapter) or (adapter.adapter_id, position) in forbidden:
                continue
            candidate = [*gpu.adapters, adapter]
            if keep_max_loras and gpu.fixed_max_lora_rank:
                fits = getattr(feasible, "fits", None)
                if fits(candidate, gpu.max_loras) if fits else feasible(candidate) is not None:
                    gpu.adapters.append(adapter)
                    break
                continue
            max_loras = feasible(candidate)
            if max_loras is not None:
                gpu.adapters.append(adapter)
                gpu.max_loras = max_loras
                break
        else:
            alone = feasible([adapter])
            gpus.append(GpuAssignment([adapter], alone if alone is not None else 8, rules=rules))
    return Plan(strategy=strategy, gpus=gpus, initial_gpus=len(gpus))


def memory_only_plan(workload: WorkloadSpec, calibration: Calibration) -> Plan:
    """Baseline: pack adapters so that every adapter has a GPU slot (max_loras = adapters on the
    GPU, no swapping), as many per GPU as GPU memory allows; load is ignored."""
    gpus: list[GpuAssignment] = []
    memory = calibration.memory
    for adapter in sorted(workload.adapters, key=lambda a: (-a.rank, a.adapter_id)):
        for gpu in gpus:
            n = len(gpu.adapters) + 1
            rank = max(gpu.max_lora_rank, DEFAULT_RULES.max_lora_rank_for(adapter.rank))
            if n <= max(MAX_LORAS_CHOICES) and memory.fits(n, rank,
                                                           max_model_len=workload.max_model_len):
                gpu.adapters.append(adapter)
                gpu.max_loras = n
                break
        else:
            gpus.append(GpuAssignment([adapter], 1))
    return Plan(strategy="memory_only", gpus=gpus, initial_gpus=len(gpus))


def fixed_plan(workload: WorkloadSpec, per_gpu: int = 32) -> Plan:
    """Baseline: a fixed number of adapters per GPU (in id order), max_loras = per_gpu."""
    ordered = sorted(workload.adapters, key=lambda a: a.adapter_id)
    gpus = [GpuAssignment(list(ordered[i:i + per_gpu]), per_gpu)
            for i in range(0, len(ordered), per_gpu)]
    return Plan(strategy=f"fixed_{per_gpu}", gpus=gpus, initial_gpus=len(gpus))


@dataclass(frozen=True)
class TwinCheck:
    """How GPUs are verified in the twin: simulated seconds, seed of GPU i = seed + i, the
    GPU memory (GiB; None = the calibration's) and vLLM's --max-model-len (tokens)."""

    calibration: Calibration
    duration_s: float = 1800.0
    seed: int = 0
    gpu_memory_gib: float | None = None
    max_model_len: int = 32768

    def run(self, gpu: GpuAssignment, index: int) -> TwinResult:
        return simulate(gpu.adapters, gpu.instance(self.gpu_memory_gib, self.max_model_len),
                        self.calibration, duration_s=self.duration_s, seed=self.seed + index)


def _shed(gpu: GpuAssignment, result: TwinResult, criterion: Criterion,
          keep: bool) -> list[AdapterSpec]:
    """The adapters to move off a failing GPU: the largest first until the GPU keeps what it
    can serve: half for a memory error, its served fraction less 10 points for starvation,
    for a latency miss its latency slack squared (a running GPU in a re-plan, `keep`: the slack
    itself, to move as little as possible); at most 90% (95% when `keep`) of the load, at
    least 30%; always at least one adapter and never all."""
    starving = result.throughput_to_ideal < 1.0 - STARVATION_THRESHOLD + (
        0.0 if keep else criterion.served_margin)
    slack = criterion.slack(result, keep)
    if result.memory_error:
        keep_fraction = 0.5
    else:
        keep_fraction = min(0.95 if keep else 0.9,
                            max(0.1, result.throughput_to_ideal - 0.1) if starving else 1.0,
                            max(0.3, slack if keep else slack ** 2))
    keep_tok_s = gpu.offered_tok_s * keep_fraction
    ordered = sorted(gpu.adapters, key=lambda a: (a.token_rate_tok_s, a.adapter_id))
    kept: list[AdapterSpec] = []
    total = 0.0
    for adapter in ordered:
        if total + adapter.token_rate_tok_s <= keep_tok_s:
            kept.append(adapter)
            total += adapter.token_rate_tok_s
    if len(kept) == len(ordered):
        kept = ordered[:-1]
    if not kept:
        kept = ordered[:1]
    return [a for a in ordered if a not in kept]


def all_slots_max_loras(gpu: GpuAssignment, check: TwinCheck) -> int | None:
    """The largest max_loras up to one slot per adapter that fits GPU memory (None: none
    above the GPU's current setting)."""
    rank = gpu.max_lora_rank
    for choice in range(len(gpu.adapters), gpu.max_loras, -1):
        if check.calibration.memory.fits(choice, rank, check.gpu_memory_gib, check.max_model_len):
            return choice
    return None


def _more_slots(gpu: GpuAssignment, index: int, check: TwinCheck,
                criterion: Criterion) -> TwinResult | None:
    """A GPU with more adapters than slots that fails may only lack slots (requests wait for
    their adapter): the twin result with one slot per adapter (as far as memory allows) when
    that passes, keeping that setting; else None and the GPU unchanged."""
    if gpu.fixed_max_lora_rank or len(gpu.adapters) <= gpu.max_loras:
        return None
    choice = all_slots_max_loras(gpu, check)
    if choice is None:
        return None
    old, gpu.max_loras = gpu.max_loras, choice
    result = check.run(gpu, index)
    if criterion.passes(result):
        return result
    gpu.max_loras = old
    return None


def verify_and_repair(plan: Plan, check: TwinCheck, criterion: Criterion | None = None,
                      feasible: Feasibility | None = None, max_rounds: int = 20,
                      keep: frozenset[str] = frozenset(), reinsert_rounds: int = 3) -> Plan:
    """Simulates every GPU in the twin; a GPU that fails the criterion sheds adapters (see
    `_shed`), which go to other GPUs that the feasibility accepts (first fit, largest first)
    or to new GPUs, until every GPU passes, a failing GPU holds a single adapter (it cannot be
    split further), or `max_rounds` pass; an adapter never returns to a GPU it was shed from,
    and after `reinsert_rounds` rounds shed adapters go to a new GPU together, so repairs
    converge. A failing GPU with more adapters than slots first tries one slot per adapter.
    GPUs named in `keep` (running instances in a re-plan)
    are judged by the criterion without margins. `feasible` also re-chooses the max_loras of
    GPUs that are not running instances (None: the largest that fits memory)."""
    criterion = criterion or Criterion()
    results: dict[int, TwinResult] = {}
    forbidden: set[tuple[str, int]] = set()
    for round_index in range(max_rounds):
        moved: list[AdapterSpec] = []
        for index, gpu in enumerate(plan.gpus):
            if index in results:
                continue
            results[index] = check.run(gpu, index)
            if criterion.passes(results[index], keep=gpu.name in keep) or len(gpu.adapters) == 1:
                continue
            slotted = _more_slots(gpu, index, check, criterion)
            if slotted is not None:
                results[index] = slotted
                continue
            shed = _shed(gpu, results[index], criterion, keep=gpu.name in keep)
            gpu.adapters = [a for a in gpu.adapters if a not in shed]
            if not gpu.fixed_max_lora_rank:
                chosen = feasible(gpu.adapters) if feasible is not None else None
                gpu.max_loras = chosen if chosen is not None else _safe_max_loras(gpu, check)
            moved.extend(shed)
            forbidden.update((a.adapter_id, index) for a in shed)
            del results[index]
            plan.repairs += 1
        if not moved:
            break
        before = [list(g.adapters) for g in plan.gpus]
        rules = plan.gpus[0].rules
        if feasible is None or round_index >= reinsert_rounds:
            new_gpu = GpuAssignment(moved, max(8, len(moved)), rules=rules)
            chosen = feasible(moved) if feasible is not None else None
            new_gpu.max_loras = chosen if chosen is not None else _safe_max_loras(new_gpu, check)
            plan.gpus.append(new_gpu)
        else:
            first_fit_decreasing(moved, feasible, gpus=plan.gpus, keep_max_loras=True,
                                 rules=rules, forbidden=frozenset(forbidden))
        for index, gpu in enumerate(plan.gpus):
            if index >= len(before) or gpu.adapters != before[index]:
                results.pop(index, None)
    plan.twin = [results[i] if i in results else check.run(g, i)
                 for i, g in enumerate(plan.gpus)]
    return plan


def _safe_max_loras(gpu: GpuAssignment, check: TwinCheck) -> int:
    """The largest max_loras not above the adapter count (and the old setting) that fits."""
    rank = gpu.max_lora_rank
    for choice in sorted({*MAX_LORAS_CHOICES, len(gpu.adapters)}, reverse=True):
        if choice <= max(len(gpu.adapters), 8) and choice <= max(gpu.max_loras, 8) and \
                check.calibration.memory.fits(choice, rank, check.gpu_memory_gib,
                                              check.max_model_len):
            return choice
    return 8


def exact_minimum_gpus(adapters: Sequence[AdapterSpec], feasible: Feasibility,
                       limit: int = 10) -> int:
    """Fewest GPUs over every partition of the adapters into feasible groups (exhaustive search
    with branch and bound; tiny instances only)."""
    if len(adapters) > limit:
        raise WorkloadSpecError(f"exact search is for at most {limit} adapters, got "
                                f"{len(adapters)}")
    items = sorted(adapters, key=lambda a: -a.token_rate_tok_s)
    cache: dict[tuple[str, ...], bool] = {}

    def ok(group: list[AdapterSpec]) -> bool:
        key = tuple(sorted(a.adapter_id for a in group))
        if key not in cache:
            cache[key] = feasible(group) is not None
        return cache[key]

    best = len(items)

    def search(i: int, bins: list[list[AdapterSpec]]) -> None:
        nonlocal best
        if len(bins) >= best:
            return
        if i == len(items):
            best = len(bins)
            return
        for b in bins:
            b.append(items[i])
            if ok(b):
                search(i + 1, bins)
            b.pop()
        bins.append([items[i]])
        search(i + 1, bins)
        bins.pop()

    search(0, [])
    return best


def consolidate(plan: Plan, check: TwinCheck, criterion: Criterion | None = None,
                feasible: Feasibility | None = None, max_attempts: int = 8) -> Plan:
    """Twin-verified consolidation after repair: merge the two least-loaded GPUs into one while
    the merged GPU passes in the twin (the surrogate is conservative near its decision boundary;
    the twin has the last word). GPUs holding replicas of the same adapter are not merged."""
    criterion = criterion or Criterion()
    if len(plan.twin) != len(plan.gpus):
        plan = verify_and_repair(plan, check, criterion, feasible)
    for _ in range(max_attempts):
        if len(plan.gpus) < 2:
            break
        order = sorted(range(len(plan.gpus)), key=lambda i: plan.gpus[i].offered_tok_s)
        a, b = order[0], order[1]
        ids_a = {x.adapter_id for x in plan.gpus[a].adapters}
        if any(x.adapter_id in ids_a for x in plan.gpus[b].adapters):
            break
        merged = GpuAssignment(plan.gpus[a].adapters + plan.gpus[b].adapters,
                               max(plan.gpus[a].max_loras, plan.gpus[b].max_loras),
                               rules=plan.gpus[a].rules)
        chosen = feasible(merged.adapters) if feasible is not None else None
        merged.max_loras = chosen if chosen is not None else _safe_max_loras(merged, check)
        keep = [i for i in range(len(plan.gpus)) if i not in (a, b)]
        result = check.run(merged, len(keep))
        if not criterion.passes(result):
            result = _more_slots(merged, len(keep), check, criterion)
            if result is None:
                break
        plan.gpus = [plan.gpus[i] for i in keep] + [merged]
        plan.twin = [plan.twin[i] for i in keep] + [result]
    return plan


def free_a_gpu(plan: Plan, check: TwinCheck, criterion: Criterion,
                       candidates: int = 3) -> bool:
    """Moves every adapter of the least-loaded GPU, largest first, to one of the `candidates`
    least-loaded other GPUs that accepts it and still meets the criterion (with its margins) in
    the twin with it. Returns whether the GPU was freed (and removed); changes nothing if not."""
    if len(plan.gpus) < 2:
        return False
    victim = min(range(len(plan.gpus)), key=lambda i: plan.gpus[i].offered_tok_s)
    others = [g for i, g in enumerate(plan.gpus) if i != victim]
    for adapter in sorted(plan.gpus[victim].adapters, key=lambda a: -a.token_rate_tok_s):
        order = sorted(range(len(others)), key=lambda j: others[j].offered_tok_s)
        for j in [j for j in order if others[j].accepts(adapter)][:candidates]:
            trial = replace(others[j], adapters=[*others[j].adapters, adapter])
            if criterion.passes(check.run(trial, j)):
                others[j] = trial
                break
        else:
            return False
    plan.gpus = others
    return True
