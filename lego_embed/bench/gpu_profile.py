"""Subtask and whole-action costs of a model, each set against its roofline floor.

`profile_subtasks` times every subtask kind with the executor (CUDA events on a GPU): prefill
blocks at the prompt lengths asked for, decode layers at a range of contexts. `time_actions`
runs LEGO's unit of work, one NPC action (a prompt, then a number of free output tokens), at
each skip level of a plan set, and reports its GPU time (sum of subtask durations), its wall
time (which adds launches and synchronisation per subtask) and its floor.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict

from lego_embed.bench.roofline import DevicePeaks, Work, subtask_work
from lego_embed.model.executor import Executor, GreedySampler
from lego_embed.model.layer_plan import AdaptorStep, LayerPlan
from lego_embed.model.loading import LoadedModel
from lego_embed.model.profile import measure_cost_profile
from lego_embed.model.subtask import Subtask, SubtaskKind


def _element_bytes(loaded: LoadedModel) -> int:
    return loaded.model.embed.weight.element_size()


def _floors(work: Work, peaks: Sequence[DevicePeaks]) -> dict[str, float]:
    return {peak.source: round(peak.floor_us(work), 3) for peak in peaks}


def profile_subtasks(
    loaded: LoadedModel, prompt_lengths: Sequence[int], decode_contexts: Sequence[int],
    peaks: Sequence[DevicePeaks], warmup: int, repeats: int,
) -> list[dict]:
    """Median duration of every subtask kind, its work and its floors (µs) under each peak."""
    profile = measure_cost_profile(loaded, prompt_lengths, decode_contexts, batch_sizes=(),
                                   warmup=warmup, repeats=repeats)
    rows = []
    for entry in profile.entries:
        subtask = Subtask(SubtaskKind(entry.kind), entry.phase, 0, 0, entry.tokens,
                          entry.context_tokens)
        work = subtask_work(loaded.args, subtask, _element_bytes(loaded))
        floors = _floors(work, peaks)
        rows.append({
            **asdict(entry), "flops": work.flops, "bytes": work.bytes, "floor_us": floors,
            "ratio_to_floor": {k: round(entry.median_us / v, 3) for k, v in floors.items() if v},
        })
    return rows


def _adaptor_width(plan: LayerPlan, first_layer: int) -> int:
    for step in plan.steps:
        if isinstance(step, AdaptorStep) and step.first_layer == first_layer:
            return step.module.up.out_features
    return 0


def time_actions(
    loaded: LoadedModel, plans: dict[int, LayerPlan], prompt_tokens: int, new_tokens: int,
    peaks: Sequence[DevicePeaks], warmup: int, repeats: int, seed: int = 0,
) -> list[dict]:
    """Per skip level (skipped layers -> plan): median GPU and wall time of one action of
    `prompt_tokens` + `new_tokens` free tokens (ms), subtasks per action, and its floors.
    Levels are interleaved within each repeat so drift affects all of them alike."""
    executor = Executor(loaded)
    rng = random.Random(seed)
    gpu_ms: dict[int, list[float]] = {k: [] for k in plans}
    wall_ms: dict[int, list[float]] = {k: [] for k in plans}
    programs: dict[int, list[Subtask]] = {}
    for run in range(warmup + repeats):
        for skipped, plan in plans.items():
            prompt = [rng.randrange(loaded.args.vocab_size) for _ in range(prompt_tokens)]
            state = executor.start(prompt, GreedySampler(None, new_tokens), plan)
            started = time.perf_counter()
            timings = executor.run_to_completion(state)
            elapsed_ms = (time.perf_counter() - started) * 1e3
            programs[skipped] = [t.subtask for t in timings]
            if run >= warmup:
                gpu_ms[skipped].append(sum(t.duration_ns for t in timings) / 1e6)
                wall_ms[skipped].append(elapsed_ms)
    rows = []
    for skipped, plan in plans.items():
        work = Work(0.0, 0.0)
        for subtask in programs[skipped]:
            work += subtask_work(loaded.args, subtask, _element_bytes(loaded),
                                 _adaptor_width(plan, subtask.first_layer))
        floors = _floors(work, peaks)
        gpu = statistics.median(gpu_ms[skipped])
        rows.append({
            "skipped_layers": skipped, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "subtasks": len(programs[skipped]), "gpu_ms_median": round(gpu, 4),
            "gpu_ms_min": round(min(gpu_ms[skipped]), 4),
            "wall_ms_median": round(statistics.median(wall_ms[skipped]), 4),
            "floor_ms": {k: round(v / 1e3, 4) for k, v in floors.items()},
            "ratio_to_floor": {k: round(gpu * 1e3 / v, 3) for k, v in floors.items() if v},
            "repeats": repeats,
        })
    return rows
