"""Distilling a span adaptor from the full model, on CPU, in seconds to minutes.

One teacher pass over the calibration batches records, with the unmodified model, the hidden
states entering and leaving every span to distil, and the next-token log-probabilities of the
batches stage 2 uses. Then, per span:

1. **Hidden-state regression (MSE).** The adaptor is fitted to map the recorded span input to
   the recorded span output, per token, by mean squared error with Adam on random token
   minibatches. Only the adaptor runs, so thousands of steps take seconds. Layers before the
   span are untouched at run time, so the recorded input is exactly what the adaptor will see.
2. **Logit matching (KL, optional).** The adaptor is fine-tuned inside the skipped model:
   KL(teacher || student) of the next-token distributions (answer positions weighted like the
   model's own training), plus the stage-1 MSE as an anchor. The unchanged layers before the
   span are not recomputed: a replay step feeds the recorded span input in their place, so a
   step costs the adaptor and the layers after the span, forward and backward. Gradients reach
   only the adaptor; the model's weights stay frozen.

The quality number reported is the *unexplained fraction* on held-out calibration tokens:
``mean |adaptor(x) - y|^2 / mean |x - y|^2`` (x: span input, y: span output). Plain skipping
(the identity) scores 1.0 by definition; 0 would be a perfect replacement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lego_embed.model.decoder import Transformer
from lego_embed.model.layer_plan import AdaptorStep, LayerPlan
from lego_embed.skip.adaptor import AdaptorShape, SpanAdaptor
from lego_embed.skip.calibration import CalibrationBatch
from lego_embed.skip.reference import plan_logits
from lego_embed.skip.spans import Span

ANSWER_WEIGHT = 4.0
HELD_OUT_TOKEN_FRACTION = 0.1


@dataclass(frozen=True)
class DistillConfig:
    """Distillation settings.

    intermediate_size: adaptor width (None: default_adaptor_width of the span).
    mse_steps / mse_batch_tokens: stage-1 Adam steps and tokens per minibatch.
    kl_steps: stage-2 steps, one calibration batch each (0: MSE only); kl_batches: how many
    calibration batches (the first ones) stage 2 draws from (their teacher log-probabilities
    are kept in memory). kl_weight / mse_anchor_weight: stage-2 loss =
    kl_weight * KL + mse_anchor_weight * MSE / mean |x - y|^2.
    learning_rate: stage-1 Adam peak learning rate (stage 2 uses a quarter of it), cosine-decayed
    to 10% over each stage.
    """

    intermediate_size: int | None = None
    mse_steps: int = 2000
    mse_batch_tokens: int = 1024
    kl_steps: int = 150
    kl_batches: int = 8
    kl_weight: float = 1.0
    mse_anchor_weight: float = 0.1
    learning_rate: float = 2e-3
    seed: int = 0


def default_adaptor_width(hidden_size: int, skipped_layers: int) -> int:
    """Adaptor width grows with the span it replaces: hidden_size / 2 per skipped layer, at
    least hidden_size (1x) and at most 4 * hidden_size (a Llama MLP's usual expansion). The
    adaptor's cost therefore stays a small, roughly constant fraction of the span's cost."""
    return hidden_size * min(4, max(1, skipped_layers // 2))


@dataclass(frozen=True)
class DistilledAdaptor:
    """A trained adaptor for one span and how well it reproduces the span.

    unexplained_after_mse / unexplained_final: held-out unexplained fraction (see module doc,
    1.0 = plain skip); final_kl: mean stage-2 KL in nats/token over the last tenth of its steps
    (None without stage 2); seconds: wall time of both stages (not the shared teacher pass)."""

    span: Span
    adaptor: SpanAdaptor
    unexplained_after_mse: float
    unexplained_final: float
    final_kl: float | None
    seconds: float


@dataclass(frozen=True)
class TeacherRecord:
    """What the unmodified model computed on the calibration batches.

    states: per layer-input index, one (batch, tokens, hidden) tensor per batch (padding
    included). log_probs: next-token log-probabilities (batch, tokens, vocab) of the first
    batches (as many as stage 2 uses). seconds: wall time of the recording pass."""

    batches: list[CalibrationBatch]
    states: dict[int, list[torch.Tensor]]
    log_probs: list[torch.Tensor]
    seconds: float

    def real_tokens(self, state: int) -> torch.Tensor:
        """The recorded state's real (non-padding) tokens, concatenated: (tokens, hidden)."""
        return torch.cat([
            hidden[batch.attention_mask.bool()]
            for hidden, batch in zip(self.states[state], self.batches, strict=True)
        ])


@torch.no_grad()
def record_teacher(
    model: Transformer, batches: Sequence[CalibrationBatch], states: Sequence[int],
    log_prob_batches: int,
) -> TeacherRecord:
    """One full-model pass over ``batches`` keeping the hidden states at ``states`` and the
    log-probabilities of the first ``log_prob_batches`` batches."""
    started = time.perf_counter()
    kept: dict[int, list[torch.Tensor]] = {s: [] for s in states}
    log_probs = []
    for index, batch in enumerate(batches):
        output = model(batch.input_ids, batch.attention_mask, capture=set(states))
        for state in states:
            kept[state].append(output.states[state].float())
        if index < log_prob_batches:
            log_probs.append(torch.log_softmax(output.logits.float(), dim=-1))
    return TeacherRecord(list(batches), kept, log_probs, time.perf_counter() - started)


@torch.no_grad()
def unexplained_fraction(adaptor: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """mean |adaptor(x) - y|^2 / mean |x - y|^2 over the given tokens."""
    residual = (adaptor(x) - y).pow(2).sum(-1).mean()
    skip = (x - y).pow(2).sum(-1).mean().clamp_min(1e-12)
    return float(residual / skip)


def _set_cosine_lr(optimizer: torch.optim.Optimizer, peak: float, step: int, steps: int) -> None:
    progress = step / max(1, steps - 1)
    lr = peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _fit_mse(adaptor: SpanAdaptor, x: torch.Tensor, y: torch.Tensor, config: DistillConfig,
             generator: torch.Generator) -> None:
    optimizer = torch.optim.Adam(adaptor.parameters(), lr=config.learning_rate)
    scale = (x - y).pow(2).sum(-1).mean().clamp_min(1e-12)
    tokens = x.shape[0]
    for step in range(config.mse_steps):
        rows = torch.randint(0, tokens, (min(config.mse_batch_tokens, tokens),),
                             generator=generator)
        loss = (adaptor(x[rows]) - y[rows]).pow(2).sum(-1).mean() / scale
        _set_cosine_lr(optimizer, config.learning_rate, step, config.mse_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


class _Replay(nn.Module):
    """Stands in for the unchanged layers before a span: returns the recorded span input."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.hidden


class _OutputRecorder(nn.Module):
    """Runs a module and keeps its last output (the adaptor's, for the stage-2 MSE anchor)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.output: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.output = self.module(hidden)
        return self.output


def _position_weights(batch: CalibrationBatch) -> torch.Tensor:
    """Per-position weight of the next-token KL: 1 on real tokens, ANSWER_WEIGHT where the
    model states its answer, 0 on padding and on each sequence's last token."""
    weights = batch.attention_mask.float()
    weights[:, :-1] *= batch.attention_mask[:, 1:].float()
    weights[:, -1] = 0.0
    return weights + (ANSWER_WEIGHT - 1.0) * batch.answer_mask.float()


def _fit_kl(model: Transformer, adaptor: SpanAdaptor, span: Span, teacher: TeacherRecord,
            config: DistillConfig, generator: torch.Generator) -> float:
    num_layers = model.args.num_layers
    replay = _Replay()
    recorder = _OutputRecorder(adaptor)
    plan = LayerPlan((
        AdaptorStep(0, span.first_layer - 1, replay),
        AdaptorStep(span.first_layer, span.last_layer, recorder),
        *range(span.last_layer + 1, num_layers),
    )).validate(num_layers)
    peak = config.learning_rate * 0.25
    optimizer = torch.optim.Adam(adaptor.parameters(), lr=peak)
    kl_tail: list[float] = []
    for step in range(config.kl_steps):
        index = int(torch.randint(0, len(teacher.log_probs), (1,), generator=generator))
        batch = teacher.batches[index]
        x = teacher.states[span.first_layer][index]
        y = teacher.states[span.last_layer + 1][index]
        replay.hidden = x
        student_logp = torch.log_softmax(
            plan_logits(model, batch.input_ids, batch.attention_mask, plan).float(), dim=-1)
        teacher_logp = teacher.log_probs[index]
        weights = _position_weights(batch)
        kl_per_position = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
        kl = (kl_per_position * weights).sum() / weights.sum()
        real = batch.attention_mask.bool()
        anchor = ((recorder.output[real] - y[real]).pow(2).sum(-1).mean()
                  / (x[real] - y[real]).pow(2).sum(-1).mean().clamp_min(1e-12))
        loss = config.kl_weight * kl + config.mse_anchor_weight * anchor
        _set_cosine_lr(optimizer, peak, step, config.kl_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= config.kl_steps - max(1, config.kl_steps // 10):
            kl_tail.append(kl.item())
    return sum(kl_tail) / len(kl_tail)


def distill_adaptor(
    model: Transformer, teacher: TeacherRecord, span: Span, config: DistillConfig
) -> DistilledAdaptor:
    """Trains the adaptor for ``span`` against the frozen ``model``, from a teacher record
    holding the span's input and output states (see record_teacher)."""
    started = time.perf_counter()
    num_layers = model.args.num_layers
    if span.first_layer < 1 or span.last_layer >= num_layers:
        raise ValueError(f"span {span} must lie within layers 1..{num_layers - 1}")
    missing = {span.first_layer, span.last_layer + 1} - set(teacher.states)
    if missing:
        raise ValueError(f"the teacher record lacks states {sorted(missing)} of span {span}")
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    x, y = teacher.real_tokens(span.first_layer), teacher.real_tokens(span.last_layer + 1)
    order = torch.randperm(x.shape[0], generator=generator)
    held_out = max(1, int(x.shape[0] * HELD_OUT_TOKEN_FRACTION))
    test, train = order[:held_out], order[held_out:]
    args = model.args
    shape = AdaptorShape(
        hidden_size=args.hidden_size,
        intermediate_size=config.intermediate_size
        or default_adaptor_width(args.hidden_size, span.skipped_layers),
        rms_norm_eps=args.rms_norm_eps,
    )
    adaptor = SpanAdaptor(shape).float()
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    try:
        _fit_mse(adaptor, x[train], y[train], config, generator)
        after_mse = unexplained_fraction(adaptor, x[test], y[test])
        final_kl = None
        if config.kl_steps > 0 and teacher.log_probs:
            final_kl = _fit_kl(model, adaptor, span, teacher, config, generator)
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad[name])
    adaptor.eval()
    return DistilledAdaptor(
        span=span,
        adaptor=adaptor,
        unexplained_after_mse=after_mse,
        unexplained_final=unexplained_fraction(adaptor, x[test], y[test]),
        final_kl=final_kl,
        seconds=time.perf_counter() - started,
    )


def distill_spans(
    model: Transformer,
    batches: Sequence[CalibrationBatch],
    spans: Sequence[Span],
    config: DistillConfig,
    on_done: Callable[[DistilledAdaptor], None] | None = None,
) -> tuple[list[DistilledAdaptor], TeacherRecord]:
    """distill_adaptor for each span from one shared teacher pass; returns the results (in
    ``spans`` order) and the teacher record."""
    states = sorted({s.first_layer for s in spans} | {s.last_layer + 1 for s in spans})
    log_prob_batches = config.kl_batches if config.kl_steps > 0 else 0
    teacher = record_teacher(model, batches, states, log_prob_batches)
    results = []
    for span in spans:
        result = distill_adaptor(model, teacher, span, config)
        results.append(result)
        if on_done is not None:
            on_done(result)
    return results, teacher
