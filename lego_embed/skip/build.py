"""Building a SkipBundle: similarity map -> one span per budget -> distilled adaptors -> measured
cost saving. Accuracy and perplexity are added by the caller (they need the task's held-out
decisions, see evaluate.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lego_embed.model.loading import LoadedModel
from lego_embed.skip.bundle import ModelIdentity, SkipBundle, SkipLevel
from lego_embed.skip.calibration import CalibrationBatch
from lego_embed.skip.cost import measure_cost_savings
from lego_embed.skip.distill import DistillConfig, DistilledAdaptor, distill_spans
from lego_embed.skip.similarity import SimilarityMap, compute_similarity
from lego_embed.skip.spans import choose_spans


@dataclass(frozen=True)
class BuildResult:
    """A freshly built bundle, the similarity map its spans came from, and each level's
    distillation result (same order as the bundle's levels)."""

    bundle: SkipBundle
    similarity: SimilarityMap
    distilled: list[DistilledAdaptor]


def build_bundle(
    loaded: LoadedModel,
    batches: Sequence[CalibrationBatch],
    budgets: Sequence[int],
    config: DistillConfig,
    cost_prompt_ids: Sequence[int],
    calibration_facts: dict | None = None,
    on_distilled: Callable[[DistilledAdaptor], None] | None = None,
) -> BuildResult:
    """Builds every level (one per budget, in increasing budget order) for ``loaded``."""
    budgets = sorted(set(budgets))
    if not budgets:
        raise ValueError("give at least one skip budget (number of layers to skip)")
    similarity = compute_similarity(loaded.model, batches)
    spans = choose_spans(similarity, budgets)
    distilled, teacher = distill_spans(loaded.model, batches, [spans[k] for k in budgets],
                                       config, on_done=on_distilled)
    levels = []
    adaptors = {}
    for number, result in enumerate(distilled, start=1):
        adaptor = result.adaptor.to(loaded.device, loaded.dtype)
        adaptors[number] = adaptor
        levels.append(SkipLevel(
            level=number,
            span=result.span,
            adaptor_shape=adaptor.shape,
            adaptor_bytes=adaptor.shape.parameter_count * 4,
            distill={
                "seconds": round(result.seconds, 2),
                "teacher_pass_seconds": round(teacher.seconds, 2),
                "unexplained_after_mse": round(result.unexplained_after_mse, 4),
                "unexplained_final": round(result.unexplained_final, 4),
                "final_kl": None if result.final_kl is None else round(result.final_kl, 5),
            },
        ))
    bundle = SkipBundle(ModelIdentity.of(loaded), levels, adaptors,
                        calibration=calibration_facts)
    savings = measure_cost_savings(
        loaded, {lv.level: bundle.plan(lv.level) for lv in levels}, cost_prompt_ids)
    for number, saving in savings.items():
        bundle = bundle.with_measurements(number, cost_saving=round(saving, 4))
    return BuildResult(bundle, similarity, distilled)
