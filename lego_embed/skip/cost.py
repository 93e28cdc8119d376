"""Measured cost saving of skip levels: run real requests through the executor and time them.

The cost of a plan is the time of one request (prefill of the prompt, then ``decode_tokens``
decode steps) as the executor measures its subtasks (perf_counter_ns on CPU, CUDA events on a
GPU). Requests of all plans are run interleaved, ``repeats`` times each. Every distinct subtask
(same kind, phase, layers, tokens and context) gets the median of all its measured durations,
pooled over the plans that run it, and a plan's cost is the sum of its subtasks' medians. Medians
per subtask keep a preempted subtask on a shared machine from inflating one plan's total.
saving = 1 - cost(plan) / cost(full model).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence

from lego_embed.model.executor import Executor, GreedySampler, LayerPlan
from lego_embed.model.loading import LoadedModel
from lego_embed.model.subtask import Subtask


def measure_cost_savings(
    loaded: LoadedModel,
    plans: Mapping[int, LayerPlan],
    prompt_ids: Sequence[int],
    decode_tokens: int = 4,
    repeats: int = 15,
) -> dict[int, float]:
    """Fraction of the full model's request cost each plan saves, keyed like ``plans``."""
    if repeats < 1 or decode_tokens < 1:
        raise ValueError("repeats and decode_tokens must be at least 1")
    executor = Executor(loaded)
    runs: dict[int | None, LayerPlan] = {None: LayerPlan.full(loaded.num_layers), **plans}
    durations: dict[Subtask, list[int]] = defaultdict(list)
    programs: dict[int | None, list[Subtask]] = {}
    for repeat in range(repeats + 1):  # the first round warms up and is not kept
        for key, plan in runs.items():
            state = executor.start(prompt_ids, GreedySampler(None, decode_tokens), plan)
            timings = executor.run_to_completion(state)
            programs[key] = [timing.subtask for timing in timings]
            if repeat > 0:
                for timing in timings:
                    durations[timing.subtask].append(timing.duration_ns)
    median = {subtask: statistics.median(values) for subtask, values in durations.items()}
    cost = {key: sum(median[s] for s in program) for key, program in programs.items()}
    return {key: 1.0 - cost[key] / cost[None] for key in plans}
