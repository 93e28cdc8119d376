"""Measured cost saving of skip levels: run real requests through the executor and time them.

The cost of a plan is the summed duration of every subtask of one request (prefill of the
prompt and ``decode_tokens`` decode steps), as the executor measures it (perf_counter_ns on
CPU, CUDA events on a GPU). Plans are run interleaved, ``repeats`` times each, and the fastest
run of each plan is kept, so that other processes on a shared machine inflate no plan's cost
more than another's. saving = 1 - cost(plan) / cost(full model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lego_embed.model.executor import Executor, GreedySampler, LayerPlan
from lego_embed.model.loading import LoadedModel


def request_cost_ns(executor: Executor, prompt_ids: Sequence[int], plan: LayerPlan,
                    decode_tokens: int) -> int:
    """Summed subtask durations (ns) of one greedy request of ``decode_tokens`` new tokens."""
    state = executor.start(prompt_ids, GreedySampler(None, decode_tokens), plan)
    return sum(timing.duration_ns for timing in executor.run_to_completion(state))


def measure_cost_savings(
    loaded: LoadedModel,
    plans: Mapping[int, LayerPlan],
    prompt_ids: Sequence[int],
    decode_tokens: int = 4,
    repeats: int = 7,
) -> dict[int, float]:
    """Fraction of the full model's request cost each plan saves, keyed like ``plans``."""
    if repeats < 1 or decode_tokens < 1:
        raise ValueError("repeats and decode_tokens must be at least 1")
    executor = Executor(loaded)
    full = LayerPlan.full(loaded.num_layers)
    request_cost_ns(executor, prompt_ids, full, decode_tokens)
    best_full = None
    best: dict[int, int] = {}
    for _ in range(repeats):
        cost = request_cost_ns(executor, prompt_ids, full, decode_tokens)
        best_full = cost if best_full is None else min(best_full, cost)
        for key, plan in plans.items():
            cost = request_cost_ns(executor, prompt_ids, plan, decode_tokens)
            best[key] = min(best.get(key, cost), cost)
    return {key: 1.0 - cost / best_full for key, cost in best.items()}
