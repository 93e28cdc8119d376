"""How much each way of skipping k layers costs in decisions and perplexity.

Methods, for a skip budget of k layers:

- ``full``: no skipping (the reference);
- ``plain_skip``: the level's span removed, nothing in its place;
- ``early_exit``: the last k layers dropped (exit at a fixed depth, CALM/LITE-style);
- ``block_influence``: the k layers with the lowest input/output change removed (ShortGPT);
- ``adaptor``: the level's span replaced by its distilled adaptor (LEGO).

Decision accuracy is the share of held-out situations where the model's constrained greedy
answer equals the expert policy's action. Perplexity is exp(mean next-token cross-entropy) over
every real token of held-out prompt + answer sequences. Both come from one whole-sequence pass
of the plan per batch over prompt + expert answer (``reference.plan_logits``): with the expert's
tokens in place, the logits at each answer position are what constrained decoding sees as long
as it follows the expert, so agreement is exact (tests compare it with the executor-run NPC
decider).

Loss reduction versus plain skipping at one level: 1 - (full - adaptor) / (full - plain_skip)
on accuracy; the reported value averages it over the levels that skip at most a quarter of the
layers and whose plain-skip accuracy loss is measurable (at least one held-out decision).
The same formula on perplexity (plain_skip - full in the denominator) is reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from lego_embed.model.decoder import Transformer
from lego_embed.model.layer_plan import LayerPlan
from lego_embed.skip.bundle import SkipBundle
from lego_embed.skip.calibration import CalibrationBatch
from lego_embed.skip.reference import plan_logits, skip_plan
from lego_embed.skip.similarity import SimilarityMap
from lego_embed.skip.spans import lowest_influence_layers

METHODS = ("full", "plain_skip", "early_exit", "block_influence", "adaptor")
SKIPPING_METHODS = METHODS[1:]


class ActionSampler(Protocol):
    """The constrained decoder of NPC decisions (the NPC package's ConstrainedActionSampler):
    picks the next token among those that continue an allowed action."""

    def next_token(self, logits: torch.Tensor, generated: Sequence[int]) -> int: ...

    def finished(self, generated: Sequence[int]) -> bool: ...


@dataclass(frozen=True)
class PlanScore:
    """One plan on held-out data: accuracy = share of decisions equal to the expert's (0..1),
    perplexity per token; decisions and tokens counted."""

    accuracy: float
    perplexity: float
    decisions: int
    tokens: int


@dataclass(frozen=True)
class LevelEvaluation:
    """Results at one skip level: accuracy (0..1) and perplexity per method, the level's span,
    the layers block_influence removed, and the adaptor plan's measured cost saving (0..1)."""

    level: int
    skipped_layers: int
    span: tuple[int, int]
    block_influence_layers: tuple[int, ...]
    accuracy: dict[str, float]
    perplexity: dict[str, float]
    cost_saving: float | None

    def accuracy_loss_reduction(self) -> float | None:
        """1 - (full - adaptor) / (full - plain_skip); None when plain skipping loses nothing."""
        return _reduction(self.accuracy["full"] - self.accuracy["adaptor"],
                          self.accuracy["full"] - self.accuracy["plain_skip"], 0.0)

    def perplexity_loss_reduction(self) -> float | None:
        """1 - (adaptor - full) / (plain_skip - full) on perplexity."""
        return _reduction(self.perplexity["adaptor"] - self.perplexity["full"],
                          self.perplexity["plain_skip"] - self.perplexity["full"], 0.0)


def _reduction(loss: float, baseline_loss: float, tolerance: float) -> float | None:
    if baseline_loss <= tolerance:
        return None
    return 1.0 - loss / baseline_loss


@dataclass(frozen=True)
class SkipEvaluation:
    """All levels of one bundle evaluated; decision_cases and heldout_tokens say how much
    held-out data each number rests on."""

    model: str
    num_layers: int
    decision_cases: int
    heldout_tokens: int
    levels: list[LevelEvaluation]

    def quarter_levels(self) -> list[LevelEvaluation]:
        """Levels skipping at most a quarter of the layers (those the headline averages)."""
        return [lv for lv in self.levels if lv.skipped_layers <= self.num_layers / 4]

    def loss_reduction_vs_plain_skip(self) -> float | None:
        """Mean accuracy loss reduction over quarter_levels with a measurable plain-skip loss,
        where one decision of the held-out set is the smallest measurable loss."""
        one_case = 1.0 / self.decision_cases
        values = []
        for lv in self.quarter_levels():
            baseline = lv.accuracy["full"] - lv.accuracy["plain_skip"]
            if baseline >= one_case - 1e-12:
                values.append(lv.accuracy_loss_reduction())
        return sum(values) / len(values) if values else None

    def perplexity_loss_reduction_vs_plain_skip(self) -> float | None:
        values = [lv.perplexity_loss_reduction() for lv in self.quarter_levels()]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "num_layers": self.num_layers,
            "decision_cases": self.decision_cases,
            "heldout_tokens": self.heldout_tokens,
            "methods": list(METHODS),
            "levels": [
                {
                    "level": lv.level,
                    "skipped_layers": lv.skipped_layers,
                    "span": list(lv.span),
                    "block_influence_layers": list(lv.block_influence_layers),
                    "accuracy": lv.accuracy,
                    "perplexity": lv.perplexity,
                    "cost_saving": lv.cost_saving,
                    "loss_reduction_accuracy": lv.accuracy_loss_reduction(),
                    "loss_reduction_perplexity": lv.perplexity_loss_reduction(),
                }
                for lv in self.levels
            ],
            "loss_reduction_vs_plain_skip": self.loss_reduction_vs_plain_skip(),
            "loss_reduction_vs_plain_skip_perplexity":
                self.perplexity_loss_reduction_vs_plain_skip(),
            "loss_reduction_levels": [lv.level for lv in self.quarter_levels()],
        }


def method_plans(bundle: SkipBundle, similarity: SimilarityMap, level: int) -> dict[str, LayerPlan]:
    """The layer plan of every method at ``level`` (same number of skipped layers for all)."""
    num_layers = bundle.identity.num_layers
    lv = bundle.level(level)
    k = lv.skipped_layers
    return {
        "full": LayerPlan.full(num_layers),
        "plain_skip": skip_plan(num_layers, lv.span.layers()),
        "early_exit": skip_plan(num_layers, range(num_layers - k, num_layers)),
        "block_influence": skip_plan(num_layers, lowest_influence_layers(similarity, k)),
        "adaptor": bundle.plan(level),
    }


def _agrees_with_expert(
    logits: torch.Tensor, ids: torch.Tensor, answer_positions: list[int], sampler: ActionSampler
) -> bool:
    """Whether constrained greedy decoding would produce the expert answer of one sequence.

    The sequence holds the expert's answer tokens (teacher forcing), so the logits at each
    answer position are exactly what the decoder would see as long as it has followed the
    expert so far: it agrees iff every choice up to the point where the action is decided
    equals the expert's token."""
    generated: list[int] = []
    for position in answer_positions:
        token = sampler.next_token(logits[position], generated)
        if token != int(ids[position + 1]):
            return False
        generated.append(token)
        if sampler.finished(generated):
            return True
    return False


@torch.no_grad()
def score_plan(
    model: Transformer, plan: LayerPlan | None, batches: Sequence[CalibrationBatch],
    sampler: ActionSampler,
) -> PlanScore:
    """Decision agreement and perplexity of ``plan`` on held-out batches of prompt + expert
    answer sequences, from one whole-sequence pass per batch.

    Perplexity is exp(mean next-token cross-entropy) over every real token that has a real
    successor. A sequence counts as a decision when it has answer positions."""
    total_nll, tokens, hits, decisions = 0.0, 0, 0, 0
    for batch in batches:
        logits = plan_logits(model, batch.input_ids, batch.attention_mask, plan).float()
        targets = batch.input_ids[:, 1:]
        valid = batch.attention_mask[:, 1:].bool()
        total_nll += float(nn.functional.cross_entropy(
            logits[:, :-1][valid], targets[valid], reduction="sum"))
        tokens += int(valid.sum())
        for row in range(batch.input_ids.shape[0]):
            positions = batch.answer_mask[row].nonzero().flatten().tolist()
            if positions:
                decisions += 1
                hits += _agrees_with_expert(logits[row], batch.input_ids[row], positions, sampler)
    if tokens == 0 or decisions == 0:
        raise ValueError("held-out batches hold no predictable tokens or no answers")
    return PlanScore(hits / decisions, math.exp(total_nll / tokens), decisions, tokens)


def evaluate_bundle(
    model: Transformer,
    bundle: SkipBundle,
    similarity: SimilarityMap,
    heldout_batches: Sequence[CalibrationBatch],
    sampler: ActionSampler,
    model_name: str,
    on_scored: Callable[[int, str, PlanScore], None] | None = None,
) -> SkipEvaluation:
    """Every method at every level of ``bundle`` (the full model scored once)."""
    full = score_plan(model, LayerPlan.full(bundle.identity.num_layers), heldout_batches, sampler)
    if on_scored is not None:
        on_scored(0, "full", full)
    levels = []
    for lv in bundle.levels:
        plans = method_plans(bundle, similarity, lv.level)
        accuracy = {"full": full.accuracy}
        ppl = {"full": full.perplexity}
        for method in SKIPPING_METHODS:
            score = score_plan(model, plans[method], heldout_batches, sampler)
            accuracy[method], ppl[method] = score.accuracy, score.perplexity
            if on_scored is not None:
                on_scored(lv.level, method, score)
        levels.append(LevelEvaluation(
            level=lv.level,
            skipped_layers=lv.skipped_layers,
            span=(lv.span.first_layer, lv.span.last_layer),
            block_influence_layers=tuple(lowest_influence_layers(similarity, lv.skipped_layers)),
            accuracy=accuracy,
            perplexity=ppl,
            cost_saving=lv.cost_saving,
        ))
    return SkipEvaluation(
        model=model_name,
        num_layers=bundle.identity.num_layers,
        decision_cases=full.decisions,
        heldout_tokens=full.tokens,
        levels=levels,
    )


def plot_evaluation(evaluation: SkipEvaluation, png_path: Path) -> None:
    """Accuracy and perplexity versus skipped layers, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png_path.parent.mkdir(parents=True, exist_ok=True)
    ks = [lv.skipped_layers for lv in evaluation.levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"full": "k--", "plain_skip": "o-", "early_exit": "s-",
              "block_influence": "^-", "adaptor": "D-"}
    for method in METHODS:
        acc = [lv.accuracy[method] for lv in evaluation.levels]
        ppl = [lv.perplexity[method] for lv in evaluation.levels]
        width = 2.5 if method == "adaptor" else 1.3
        left.plot(ks, acc, styles[method], label=method, linewidth=width)
        right.plot(ks, ppl, styles[method], label=method, linewidth=width)
        for k, a in zip(ks, acc, strict=True):
            if method == "adaptor":
                left.annotate(f"{a:.3f}", (k, a), textcoords="offset points", xytext=(0, 6),
                              ha="center", fontsize=7)
    left.set_xlabel("skipped layers k")
    left.set_ylabel("decision agreement with the expert")
    left.set_title(f"held-out decisions ({evaluation.decision_cases} situations)")
    left.set_xticks(ks)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.set_xlabel("skipped layers k")
    right.set_ylabel("held-out perplexity (log scale)")
    right.set_yscale("log")
    right.set_title(f"held-out perplexity ({evaluation.heldout_tokens} tokens)")
    right.set_xticks(ks)
    right.grid(alpha=0.3, which="both")
    reduction = evaluation.loss_reduction_vs_plain_skip()
    headline = "n/a" if reduction is None else f"{reduction:.3f}"
    fig.suptitle(f"{evaluation.model}: layer skipping, {evaluation.num_layers} layers "
                 f"(accuracy loss reduction vs plain skip: {headline})", fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=130)
    plt.close(fig)
