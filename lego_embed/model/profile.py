"""Cost profile: measured duration of every subtask kind, per prompt or context length.

The scheduler predicts how long a subtask will take with `CostProfile.cost_us`. Durations are
measured by running real requests through the Executor (so they are exactly the subtasks it
runs, timed the way it times them: CUDA events on a GPU, perf_counter_ns on CPU).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from lego_embed.errors import CostProfileError
from lego_embed.model.executor import Executor, GreedySampler, PrefixCache, RequestState
from lego_embed.model.loading import LoadedModel
from lego_embed.model.subtask import SubtaskKind

DEFAULT_LENGTHS = (16, 32, 64, 128, 256, 512)
DEFAULT_BATCH_SIZES = (2, 4)


@dataclass(frozen=True)
class CostEntry:
    """Measured duration of one subtask shape: median, 90th percentile and minimum in
    microseconds over `samples` measurements (every layer of every repeat counts as one sample).
    On a shared machine the minimum is the best estimate of the uncontended cost (None in
    entries made by hand)."""

    kind: str
    phase: str
    tokens: int
    context_tokens: int
    median_us: float
    p90_us: float
    samples: int
    min_us: float | None = None


@dataclass
class CostProfile:
    """The cost of every subtask kind of one model on one device (microseconds).

    Prefill entries are measured per prompt length (tokens == context_tokens, one chunk);
    decode entries per context length and batch size (tokens = requests batched). ADAPTOR
    costs depend on the adaptor module and are not part of a model's profile.
    """

    model: str
    family: str
    device: str
    dtype: str
    num_layers: int
    torch_threads: int
    warmup: int
    repeats: int
    created_utc: str
    entries: list[CostEntry] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CostProfile:
        path = Path(path)
        if not path.is_file():
            raise CostProfileError(
                f"no cost profile at {path}; make one with "
                f"`lego-embed profile --model PATH --out {path}`"
            )
        try:
            data = json.loads(path.read_text())
            data["entries"] = [CostEntry(**entry) for entry in data["entries"]]
            return cls(**data)
        except (ValueError, TypeError, KeyError) as error:
            raise CostProfileError(
                f"{path} is not a cost profile ({error}); regenerate it with `lego-embed profile`"
            ) from error

    def cost_us(
        self, kind: SubtaskKind | str, phase: str, tokens: int, context_tokens: int
    ) -> float:
        """Predicted median duration in microseconds.

        Entries are grouped by `tokens` (prompt length, or decode batch size); within a group
        the cost is interpolated along `context_tokens`, then across groups along `tokens`:
        linearly between measured points, flat below the smallest, linearly extrapolated past
        the largest (proportionally when only one `tokens` value was measured).
        """
        kind = SubtaskKind(kind).value
        entries = [e for e in self.entries if e.kind == kind and e.phase == phase]
        if not entries:
            raise CostProfileError(
                f"the profile of {self.model} has no {phase} {kind} entries; "
                f"it has {sorted({(e.phase, e.kind) for e in self.entries})}"
            )
        groups: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for e in entries:
            groups[e.tokens].append((e.context_tokens, e.median_us))
        by_tokens = sorted((n, _interpolate(sorted(g), context_tokens)) for n, g in groups.items())
        if len(by_tokens) == 1 and tokens > by_tokens[0][0]:
            return by_tokens[0][1] * tokens / by_tokens[0][0]
        return _interpolate(by_tokens, tokens)


def _interpolate(points: list[tuple[int, float]], x: float) -> float:
    """Piecewise-linear through sorted (x, y) points; flat left, linear (never falling) right."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    if len(points) == 1 or x <= xs[0]:
        return ys[0]
    if x <= xs[-1]:
        return float(np.interp(x, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return ys[-1] + max(slope, 0.0) * (x - xs[-1])


def _summarise(samples: dict[tuple[str, str, int, int], list[int]]) -> list[CostEntry]:
    entries = []
    for (kind, phase, tokens, context), durations_ns in sorted(samples.items()):
        durations_us = np.asarray(durations_ns, dtype=np.float64) / 1000.0
        entries.append(
            CostEntry(
                kind,
                phase,
                tokens,
                context,
                round(float(np.median(durations_us)), 2),
                round(float(np.percentile(durations_us, 90)), 2),
                len(durations_ns),
                round(float(durations_us.min()), 2),
            )
        )
    return entries


def _ready_to_decode(executor: Executor, prompt: list[int], prefix: PrefixCache) -> RequestState:
    """A request for one decode step whose prefill (all but the last prompt token reused from
    `prefix`) has already run."""
    state = executor.start(prompt, GreedySampler(None, 2), prefix=prefix)
    while executor.peek(state).phase == "prefill":
        executor.step(state)
    return state


def measure_cost_profile(
    loaded: LoadedModel,
    prompt_lengths: Sequence[int] = DEFAULT_LENGTHS,
    context_lengths: Sequence[int] = DEFAULT_LENGTHS,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    warmup: int = 2,
    repeats: int = 5,
    progress: Callable[[str], None] | None = None,
) -> CostProfile:
    """Runs real requests and records every subtask's duration.

    Prefill: for each prompt length, `warmup` + `repeats` one-chunk prefills (EMBED, ATTENTION
    and FFN of every layer, HEAD). Decode: one prefix of the longest context is prefilled once;
    for each context length a request reuses it and runs `warmup` + `repeats` timed decode steps
    at exactly that context (LAYER of every layer, HEAD), alone and batched with `step_batch`
    in `batch_sizes` requests (tokens = batch size). Lengths beyond the model's context are
    replaced by the longest one it allows (max_context_tokens - 1).
    """
    limit = loaded.max_context_tokens - 1
    prompt_lengths = sorted({min(n, limit) for n in prompt_lengths if n >= 1})
    context_lengths = sorted({min(n, limit) for n in context_lengths if n >= 2})
    batch_sizes = sorted({n for n in batch_sizes if n >= 2})
    if not prompt_lengths or not context_lengths or repeats < 1 or warmup < 0:
        raise CostProfileError(
            f"nothing to measure: prompt lengths {prompt_lengths}, context lengths "
            f"{context_lengths} (prompt >= 1, context >= 2), repeats {repeats} (>= 1), "
            f"warmup {warmup} (>= 0)"
        )
    executor = Executor(loaded)
    rng = random.Random(0)
    vocab = executor.vocab_size
    samples: dict[tuple[str, str, int, int], list[int]] = defaultdict(list)

    def record(timings, keep: bool) -> None:
        for t in timings if keep else ():
            s = t.subtask
            samples[(s.kind.value, s.phase, s.tokens, s.context_tokens)].append(t.duration_ns)

    for length in prompt_lengths:
        if progress:
            progress(f"prefill {length} tokens")
        for run in range(warmup + repeats):
            prompt = [rng.randrange(vocab) for _ in range(length)]
            state = executor.start(prompt, GreedySampler(None, 1))
            record(executor.run_to_completion(state), keep=run >= warmup)

    longest = [rng.randrange(vocab) for _ in range(max(context_lengths))]
    prefix = executor.prefill_prefix(longest)
    for context in context_lengths:
        if progress:
            progress(f"decode at context {context}")
        for batch in (1, *batch_sizes):
            for run in range(warmup + repeats):
                # context - 1 prompt tokens, so the first decode step attends `context`.
                states = [
                    _ready_to_decode(executor, longest[: context - 1], prefix) for _ in range(batch)
                ]
                while executor.peek(states[0]) is not None:
                    record([executor.step_batch(states)], keep=run >= warmup)

    return CostProfile(
        model=str(loaded.path),
        family=loaded.family,
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
        num_layers=loaded.num_layers,
        torch_threads=torch.get_num_threads(),
        warmup=warmup,
        repeats=repeats,
        created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        entries=_summarise(samples),
    )
