"""Distilling a span adaptor from the full model, on CPU, in seconds to minutes.

Two stages per span, both against the unmodified model as teacher:

1. **Hidden-state regression (MSE).** The teacher's hidden states entering the span (input)
   and leaving it (target) are recorded for every real calibration token; the adaptor is fitted
   to map one to the other by mean squared error with Adam on random token minibatches. Only
   the adaptor runs, so thousands of steps take seconds. Because layers before the span are
   untouched, the recorded input is exactly what the adaptor sees at run time.
2. **Logit matching (KL, optional).** The adaptor is then fine-tuned inside the whole skipped
   model: KL(teacher || student) of the next-token distributions (answer positions weighted
   like the model's own training), plus the stage-1 MSE as an anchor. Gradients reach only the
   adaptor; the model's weights stay frozen.

The quality number reported is the *unexplained fraction* on held-out calibration tokens:
``mean |adaptor(x) - y|^2 / mean |x - y|^2`` (x: span input, y: span output). Plain skipping
(the identity) scores 1.0 by definition; 0 would be a perfect replacement.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lego_embed.skip.adaptor import AdaptorShape, SpanAdaptor
from lego_embed.skip.calibration import CalibrationBatch
from lego_embed.skip.reference import decoder_layers, plan_logits, skip_plan
from lego_embed.skip.similarity import LayerInputRecorder, record_states
from lego_embed.skip.spans import Span

ANSWER_WEIGHT = 4.0
HELD_OUT_TOKEN_FRACTION = 0.1


@dataclass(frozen=True)
class DistillConfig:
    """Distillation settings.

    intermediate_size: adaptor width (None: the model's hidden size, expansion 1x).
    mse_steps / mse_batch_tokens: stage-1 Adam steps and tokens per minibatch.
    kl_steps: stage-2 steps, one calibration batch each (0: MSE only).
    kl_weight / mse_anchor_weight: stage-2 loss = kl_weight * KL + mse_anchor_weight * MSE/|x-y|^2.
    learning_rate: Adam peak learning rate, cosine-decayed to 10% over each stage.
    """

    intermediate_size: int | None = None
    mse_steps: int = 3000
    mse_batch_tokens: int = 1024
    kl_steps: int = 300
    kl_weight: float = 1.0
    mse_anchor_weight: float = 0.1
    learning_rate: float = 2e-3
    seed: int = 0


@dataclass(frozen=True)
class DistilledAdaptor:
    """A trained adaptor for one span and how well it reproduces the span.

    unexplained_after_mse / unexplained_final: held-out unexplained fraction (see module doc,
    1.0 = plain skip); final_kl: mean stage-2 KL in nats/token over the last tenth of its steps
    (None without stage 2); seconds: wall time of both stages."""

    span: Span
    adaptor: SpanAdaptor
    unexplained_after_mse: float
    unexplained_final: float
    final_kl: float | None
    seconds: float


@dataclass(frozen=True)
class _TokenPairs:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def record_token_states(
    model: nn.Module, batches: Sequence[CalibrationBatch], states: Sequence[int]
) -> dict[int, torch.Tensor]:
    """The teacher's hidden states at ``states`` (layer-input indices) for every real token of
    every batch, concatenated: {state: (tokens, hidden)}."""
    collected: dict[int, list[torch.Tensor]] = {s: [] for s in states}
    for batch in batches:
        for state, hidden in record_states(model, batch, states).items():
            collected[state].append(hidden)
    return {state: torch.cat(parts) for state, parts in collected.items()}


def _split(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> _TokenPairs:
    order = torch.randperm(x.shape[0], generator=generator)
    held_out = max(1, int(x.shape[0] * HELD_OUT_TOKEN_FRACTION))
    test, train = order[:held_out], order[held_out:]
    return _TokenPairs(x[train], y[train], x[test], y[test])


@torch.no_grad()
def unexplained_fraction(adaptor: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """mean |adaptor(x) - y|^2 / mean |x - y|^2 over the given tokens."""
    residual = (adaptor(x) - y).pow(2).sum(-1).mean()
    skip = (x - y).pow(2).sum(-1).mean().clamp_min(1e-12)
    return float(residual / skip)


def _cosine_lr(optimizer: torch.optim.Optimizer, peak: float, step: int, steps: int) -> None:
    progress = step / max(1, steps - 1)
    lr = peak * (0.1 + 0.9 * 0.5 * (1.0 + torch.cos(torch.tensor(progress * torch.pi)).item()))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _fit_mse(adaptor: SpanAdaptor, pairs: _TokenPairs, config: DistillConfig,
             generator: torch.Generator) -> None:
    optimizer = torch.optim.Adam(adaptor.parameters(), lr=config.learning_rate)
    scale = (pairs.train_x - pairs.train_y).pow(2).sum(-1).mean().clamp_min(1e-12)
    tokens = pairs.train_x.shape[0]
    for step in range(config.mse_steps):
        rows = torch.randint(0, tokens, (min(config.mse_batch_tokens, tokens),),
                             generator=generator)
        loss = (adaptor(pairs.train_x[rows]) - pairs.train_y[rows]).pow(2).sum(-1).mean() / scale
        _cosine_lr(optimizer, config.learning_rate, step, config.mse_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


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


def _fit_kl(model: nn.Module, adaptor: SpanAdaptor, span: Span,
            batches: Sequence[CalibrationBatch], config: DistillConfig,
            generator: torch.Generator) -> float:
    num_layers = len(decoder_layers(model))
    recorder = _OutputRecorder(adaptor)
    plan = skip_plan(num_layers, span.layers(), recorder)
    optimizer = torch.optim.Adam(adaptor.parameters(), lr=config.learning_rate * 0.25)
    states = (span.first_layer, span.last_layer + 1)
    kl_tail: list[float] = []
    for step in range(config.kl_steps):
        batch = batches[int(torch.randint(0, len(batches), (1,), generator=generator))]
        real = batch.attention_mask.bool()
        with torch.no_grad():
            teacher_states = LayerInputRecorder(model, states)
            try:
                teacher_logits = model(input_ids=batch.input_ids,
                                       attention_mask=batch.attention_mask, use_cache=False).logits
            finally:
                teacher_states.remove()
            teacher_logp = torch.log_softmax(teacher_logits, dim=-1)
        student_logp = torch.log_softmax(
            plan_logits(model, batch.input_ids, batch.attention_mask, plan), dim=-1)
        weights = _position_weights(batch)
        kl_per_position = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
        kl = (kl_per_position * weights).sum() / weights.sum()
        x = teacher_states.captured[span.first_layer][real]
        y = teacher_states.captured[span.last_layer + 1][real]
        produced = recorder.output[real]
        anchor = (produced - y).pow(2).sum(-1).mean() / (x - y).pow(2).sum(-1).mean()
        loss = config.kl_weight * kl + config.mse_anchor_weight * anchor
        _cosine_lr(optimizer, config.learning_rate * 0.25, step, config.kl_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= config.kl_steps - max(1, config.kl_steps // 10):
            kl_tail.append(kl.item())
    return sum(kl_tail) / len(kl_tail)


def distill_adaptor(
    model: nn.Module,
    batches: Sequence[CalibrationBatch],
    span: Span,
    config: DistillConfig,
    token_states: dict[int, torch.Tensor] | None = None,
) -> DistilledAdaptor:
    """Trains the adaptor for ``span`` against the frozen ``model`` on the calibration batches.

    ``token_states`` may carry already recorded teacher states (from record_token_states) so
    several spans share one recording pass."""
    started = time.perf_counter()
    num_layers = len(decoder_layers(model))
    if span.first_layer < 1 or span.last_layer >= num_layers:
        raise ValueError(f"span {span} must lie within layers 1..{num_layers - 1}")
    needed = (span.first_layer, span.last_layer + 1)
    if token_states is None or any(s not in token_states for s in needed):
        token_states = record_token_states(model, batches, needed)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    pairs = _split(token_states[needed[0]], token_states[needed[1]], generator)
    config_params = model.config
    shape = AdaptorShape(
        hidden_size=int(config_params.hidden_size),
        intermediate_size=config.intermediate_size or int(config_params.hidden_size),
        rms_norm_eps=float(getattr(config_params, "rms_norm_eps", 1e-6)),
    )
    adaptor = SpanAdaptor(shape).float()
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    try:
        _fit_mse(adaptor, pairs, config, generator)
        after_mse = unexplained_fraction(adaptor, pairs.test_x, pairs.test_y)
        final_kl = None
        if config.kl_steps > 0:
            final_kl = _fit_kl(model, adaptor, span, batches, config, generator)
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad[name])
    adaptor.eval()
    return DistilledAdaptor(
        span=span,
        adaptor=adaptor,
        unexplained_after_mse=after_mse,
        unexplained_final=unexplained_fraction(adaptor, pairs.test_x, pairs.test_y),
        final_kl=final_kl,
        seconds=time.perf_counter() - started,
    )


def distill_spans(
    model: nn.Module,
    batches: Sequence[CalibrationBatch],
    spans: Sequence[Span],
    config: DistillConfig,
    on_done: Callable[[DistilledAdaptor], None] | None = None,
) -> list[DistilledAdaptor]:
    """distill_adaptor for each span, recording the teacher's states once for all of them."""
    states = sorted({s.first_layer for s in spans} | {s.last_layer + 1 for s in spans})
    token_states = record_token_states(model, batches, states)
    results = []
    for span in spans:
        result = distill_adaptor(model, batches, span, config, token_states)
        results.append(result)
        if on_done is not None:
            on_done(result)
    return results
