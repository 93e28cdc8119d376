"""The GPU check's co-location step: a replayed game and the 8B-shape LLM share one GPU.

The render stand-in (`engines.trace_replay.RenderProcess`) replays a shared render trace at
60 FPS. On CUDA each pass is GPU work of that pass's render time (`CudaPassBurner`: a loop of
matmuls whose length is calibrated at start); on the CPU rehearsal it is the CPU busy work of the
CPU co-location benchmark. Two placements: `process` (its own process and, on CUDA, its own
CUDA context, time-sliced with ours by the driver, as a game's graphics API would be) and
`thread` (a thread of the LLM's process: on CUDA the same context, the passes on a
highest-priority stream and the LLM's subtasks on the lowest: what stream priority can buy).

The LLM is a synthetic model (`bench.synthetic`: random weights made on the device) with the
WordLevel tokenizer `word_level_tokenizer` builds (tokens "t0".."t{vocab-1}", no special token,
nothing downloaded) and the synthetic skip plans as its skip levels (`synthetic_bundle`; random
adaptors: timing only, no accuracy). One NPC action is LEGO's unit of work: a prompt of
`prompt_tokens` random tokens (all of it the dynamic part: no prefix to reuse) and a `Line` of
exactly `new_tokens` tokens (the tokenizer has no end-of-sequence token and the line no stop
string: one prefill, then new_tokens - 1 decode steps, the work `gpu_profile.time_actions`
times). A Choice would decode the action trie's few tokens, or with `constrained=False` 16 free
tokens that a random model never spells as an allowed action (every answer failed);
ChoiceThenLine adds the action's and the separator's tokens. Every line token is due at the
request's deadline (pace `ACTION_PACE_TOKENS_PER_S`: token k is due (k - 1) µs after the first),
so `action_slo_attainment` counts actions whose 16 tokens all came within one action period,
LEGO's SLO; `slo_attainment` (the runtime's `deadline_met`) counts first tokens in time.
The runtime plans a line up to its next token and raises the skip level per token when the next
one would be late (`Scheduler.retarget`), so `lego` chooses its level token by token.

Blocks: one (repeat, placement, trace) each, its `off` run and every setting of the plan with
all its policies back to back, settings and the policies within each in a shuffled order.
Rows are those of `docs/benchmarks/colocation_cpu.json` with the placement, frame rate and the
whole-action SLO added. A run that would end past `stop_at` is not started (listed as skipped),
so the check stays inside the device's time limit; a run that raises, or whose render stand-in
delivered no frame (its process died: its traceback is on stderr), is listed as failed with its
error and the next one still runs.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers

from lego_embed.bench.colocation import (
    MATRIX_POLICIES,
    ColocationRun,
    ColocationSetting,
    run_colocation,
    summarize,
)
from lego_embed.bench.matrix import _spread, aggregate
from lego_embed.engines.trace_replay import (
    RENDER_PLACEMENTS,
    RenderTrace,
    all_shared_traces,
    shared_traces_dir,
)
from lego_embed.errors import TraceFormatError
from lego_embed.model.layer_plan import AdaptorStep, LayerPlan
from lego_embed.model.loading import LoadedModel
from lego_embed.model.tokenizer import Tokenizer
from lego_embed.npc.output_spec import Line
from lego_embed.npc.prompt_parts import Prompt
from lego_embed.runtime.answers import DECIDED
from lego_embed.runtime.request import Request
from lego_embed.skip.bundle import ModelIdentity, SkipBundle, SkipLevel
from lego_embed.skip.spans import Span

ACTION_PACE_TOKENS_PER_S = 1e6
CHECKOUT_TRACES_DIR = Path(__file__).resolve().parents[2] / "shared" / "traces"
RENDER_PROCESS_START_S = 5.0  # spawn, import torch, CUDA context, calibration (GPU estimate)
EXTRA_METRICS = ("fps", "fps_drop", "mean_frame_ms", "p99_frame_ms", "action_slo_attainment")


@dataclass(frozen=True)
class ColocationPlan:
    """The co-location step's subset. traces: trace names; settings: (APM, NPCs) pairs;
    policies besides `off` (which runs once per block); placements of the render stand-in;
    seconds: replay length per run; repeats; prompt_tokens / new_tokens: one action's prompt and
    line (tokens); answer_grace_s: the most a run waits after its replay for answers in flight;
    seed: of the run orders and prompts."""

    traces: tuple[str, ...]
    settings: tuple[tuple[int, int], ...]
    seconds: float
    repeats: int
    prompt_tokens: int
    new_tokens: int
    policies: tuple[str, ...] = MATRIX_POLICIES
    placements: tuple[str, ...] = RENDER_PLACEMENTS
    answer_grace_s: float = 3.0
    seed: int = 0

    def runs(self) -> int:
        """Runs of the whole plan, `off` runs included."""
        per_block = 1 + len(self.settings) * len(self.policies)
        return self.repeats * len(self.placements) * len(self.traces) * per_block


def find_traces(names: Sequence[str], directory: Path | None = None) -> list[RenderTrace]:
    """The named traces from `directory`, else from ../shared/traces, else from the checkout's
    shared/traces (what travels to a GPU machine, where ../shared is absent)."""
    candidates = [directory] if directory is not None else [shared_traces_dir(),
                                                            CHECKOUT_TRACES_DIR]
    found = next((d for d in candidates if d.is_dir()), None)
    if found is None:
        raise TraceFormatError(
            f"no trace folder at {' or '.join(map(str, candidates))}; copy ../shared/traces to "
            "the checkout's shared/traces or pass --traces DIR")
    by_name = {trace.name: trace for trace in all_shared_traces(found)}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise TraceFormatError(f"{found} has no trace {', '.join(missing)}; it has "
                               f"{', '.join(sorted(by_name))}")
    return [by_name[name] for name in names]


def word_level_tokenizer(vocab_size: int) -> Tokenizer:
    """A tokenizer with one word per token id, "t0".."t{vocab_size-1}", split on blanks; no BOS,
    EOS or padding token (so a line runs to its max_tokens). Built in code, nothing read."""
    backend = BackendTokenizer(models.WordLevel(
        {f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(backend, {}, {"bos": None, "eos": None, "pad": None})


def synthetic_bundle(loaded: LoadedModel, plans: dict[int, LayerPlan]) -> SkipBundle:
    """A SkipBundle of `bench.synthetic.skip_plans`' plans (skipped layers -> plan): level n is
    the n-th smallest nonzero skip, with that plan's random adaptor (timing only)."""
    levels, adaptors = [], {}
    for number, skipped in enumerate(sorted(k for k in plans if k > 0), start=1):
        step = next(s for s in plans[skipped].steps if isinstance(s, AdaptorStep))
        levels.append(SkipLevel(number, Span(step.first_layer, step.last_layer),
                                step.module.shape, step.module.weight_bytes))
        adaptors[number] = step.module
    return SkipBundle(ModelIdentity.of(loaded), levels, adaptors,
                      calibration={"adaptors": "random weights: timing only"})


def action_request(npc: int, rng: random.Random, setting: ColocationSetting, vocab_size: int,
                   prompt_tokens: int, new_tokens: int) -> Request:
    """One NPC action (module docstring): `prompt_tokens` random words, a Line of `new_tokens`
    tokens, every token due at the setting's SLO."""
    words = " ".join(f"t{rng.randrange(vocab_size)}" for _ in range(prompt_tokens))
    return Request(f"npc{npc}", Prompt("", words), Line(max_tokens=new_tokens), setting.slo_ms,
                   pace_tokens_per_s=ACTION_PACE_TOKENS_PER_S)


def frame_rate(run: ColocationRun) -> float | None:
    """Frames shown per second: frames after the first over the time between first and last
    frame begin (a missed vsync pushes a frame to the next tick, so misses lower it)."""
    frames = run.frames
    if len(frames) < 2 or frames[-1].begin_ns <= frames[0].begin_ns:
        return None
    return (len(frames) - 1) / ((frames[-1].begin_ns - frames[0].begin_ns) / 1e9)


def gpu_row(run: ColocationRun, off_run: ColocationRun | None) -> dict[str, Any]:
    """`bench.colocation.summarize`'s row, with the placement, fps (and its drop from the
    block's `off` run), mean frame time (ms), the whole-action SLO attainment (all line tokens
    by the deadline, over all requests) and the count of answers per skip level."""
    off_miss = None if off_run is None else summarize(off_run, None)["frame_miss_rate"]
    row = summarize(run, off_miss)
    fps = frame_rate(run)
    off_fps = frame_rate(off_run) if off_run is not None else fps
    decided = [d for d in run.decisions if d.status == DECIDED]
    whole = sum(d.deadline_met and d.late_tokens == 0 for d in decided)
    levels: dict[str, int] = {}
    for decision in decided:
        levels[str(decision.skip_level)] = levels.get(str(decision.skip_level), 0) + 1
    row.update(
        placement=run.setting.placement,
        fps=None if fps is None else round(fps, 3),
        fps_drop=None if fps is None or off_fps is None else round(off_fps - fps, 3),
        mean_frame_ms=round(float(np.mean([f.frame_ms for f in run.frames])), 3)
        if run.frames else None,
        action_slo_attainment=round(whole / run.requests, 4) if run.requests else None,
        answers_by_skip_level=levels,
    )
    return row


def _block(plan: ColocationPlan, trace: RenderTrace, placement: str, order: random.Random,
           runtime_options: dict[str, Any]) -> list[ColocationSetting]:
    """The block's runs: `off` and each setting's policies back to back, shuffled."""
    units = [[ColocationSetting(trace, 0, "off", 0, plan.seconds, placement=placement)]]
    for apm, npcs in plan.settings:
        policies = list(plan.policies)
        order.shuffle(policies)
        units.append([ColocationSetting(trace, apm, policy, npcs, plan.seconds,
                                        runtime_options=runtime_options, request_options={},
                                        placement=placement) for policy in policies])
    order.shuffle(units)
    return [setting for unit in units for setting in unit]


def _expected_run_s(plan: ColocationPlan, placement: str, past: dict[str, list[float]]) -> float:
    if past.get(placement):
        return max(past[placement])
    return plan.seconds + plan.answer_grace_s + RENDER_PROCESS_START_S


def run_gpu_colocation(
    loaded: LoadedModel,
    bundle: SkipBundle,
    traces: list[RenderTrace],
    plan: ColocationPlan,
    render_device: str,
    stop_at: float,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs the plan (module docstring) with `loaded` (it needs a tokenizer) on its device;
    no run starts that would end past `stop_at` (time.monotonic()). Returns the rows, the runs
    and what was skipped or failed, as `colocation_gpu.json` holds them."""
    runtime_options = {"chat_template": False, "warmup_prompt_tokens": plan.prompt_tokens}
    factory = partial(action_request, vocab_size=loaded.args.vocab_size,
                      prompt_tokens=plan.prompt_tokens, new_tokens=plan.new_tokens)
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    past: dict[str, list[float]] = {}
    total, done = plan.runs(), 0
    for repeat in range(plan.repeats):
        placements = list(plan.placements)
        random.Random(f"{plan.seed}/{repeat}").shuffle(placements)
        for placement in placements:
            for trace in traces:
                order = random.Random(f"{plan.seed}/{repeat}/{placement}/{trace.name}")
                finished: list[tuple[int, ColocationRun, float]] = []
                for position, setting in enumerate(
                        _block(plan, trace, placement, order, runtime_options)):
                    which = {"repeat": repeat, "placement": placement, "trace": trace.name,
                             "apm": setting.apm, "npcs": setting.npcs, "policy": setting.policy}
                    if time.monotonic() + _expected_run_s(plan, placement, past) > stop_at:
                        skipped.append(which)
                        continue
                    started = time.monotonic()
                    llm = setting.policy != "off"
                    try:
                        run = run_colocation(
                            loaded if llm else None, setting, bundle if llm else None,
                            seed=plan.seed * 1000 + repeat * 100 + position,
                            answer_grace_s=plan.answer_grace_s, render_device=render_device,
                            request_factory=factory if llm else None)
                        if not run.frames:
                            raise RuntimeError("the render stand-in delivered no frame")
                    except Exception as error:  # keep the other runs: the GPU is lent once
                        failed.append({**which, "error": f"{type(error).__name__}: {error}"})
                        progress(f"colocation: {which} failed: {failed[-1]['error']}")
                        continue
                    finally:
                        past.setdefault(placement, []).append(time.monotonic() - started)
                    finished.append((position, run, round(os.getloadavg()[0], 2)))
                    done += 1
                    progress(f"colocation [{done}/{total}] repeat {repeat} {placement} "
                             f"{trace.name} {setting.policy} apm={setting.apm} "
                             f"npcs={setting.npcs} ({past[placement][-1]:.1f} s)")
                off_run = next((r for _, r, _ in finished if r.setting.policy == "off"), None)
                for position, run, load in finished:
                    off = run.setting.policy == "off"
                    row = gpu_row(run, None if off else off_run)
                    if off:
                        row.update(apm=None, npcs=0, added_frame_miss_rate=0.0)
                    row.update(section="off" if off else "main", repeat=repeat,
                               position=position, loadavg_1min=load)
                    runs.append(row)
    run_seconds = {k: [round(v, 2) for v in vs] for k, vs in past.items()}
    return {"rows": aggregate_by_placement(runs), "runs": runs, "skipped_runs": skipped,
            "failed_runs": failed, "plan": asdict(plan), "run_seconds": run_seconds}


def aggregate_by_placement(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`bench.matrix.aggregate` per placement (mean, min, max over the repeats), with the
    placement and the spreads of EXTRA_METRICS added to each row."""
    rows = []
    for placement in dict.fromkeys(r["placement"] for r in runs):
        mine = [r for r in runs if r["placement"] == placement]
        for entry in aggregate(mine):
            group = [r for r in mine if (r["section"], r["trace"], r["apm"], r["npcs"],
                                         r["policy"]) == (entry["section"], entry["trace"],
                                                          entry["apm"], entry["npcs"],
                                                          entry["policy"])]
            rows.append({"placement": placement, **entry,
                         **{m: _spread([r.get(m) for r in group]) for m in EXTRA_METRICS}})
    return rows


def with_tokenizer(loaded: LoadedModel) -> LoadedModel:
    """The synthetic model with a `word_level_tokenizer` of its vocabulary (same weights)."""
    return replace(loaded, tokenizer=word_level_tokenizer(loaded.args.vocab_size))
