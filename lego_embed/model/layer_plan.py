"""Layer plans: which decoder layers a forward pass runs, and which spans an adaptor replaces."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch

from lego_embed.errors import LayerPlanError


@dataclass(frozen=True, eq=False)
class AdaptorStep:
    """Replaces layers `first_layer`..`last_layer` (inclusive) by `module(hidden) -> hidden`.

    The replaced layers do not run and keep no KV cache for the positions the adaptor handled.
    """

    first_layer: int
    last_layer: int
    module: torch.nn.Module

    @property
    def num_layers(self) -> int:
        return self.last_layer - self.first_layer + 1


LayerStep = Union[int, AdaptorStep]  # noqa: UP007 (a runtime alias; `|` needs Python 3.10 types)


@dataclass(frozen=True)
class LayerPlan:
    """The ordered decoder-layer steps of one forward pass: layer indices and adaptor steps.

    A valid plan covers every layer 0..num_layers-1 exactly once, in order.
    """

    steps: tuple[LayerStep, ...]

    @classmethod
    def full(cls, num_layers: int) -> LayerPlan:
        return cls(tuple(range(num_layers)))

    @property
    def skipped_layers(self) -> int:
        return sum(step.num_layers for step in self.steps if isinstance(step, AdaptorStep))

    def validate(self, num_layers: int) -> LayerPlan:
        """Returns self, or raises LayerPlanError if the plan does not fit a model of num_layers."""
        covered: list[int] = []
        for step in self.steps:
            if isinstance(step, AdaptorStep):
                if step.last_layer < step.first_layer:
                    raise LayerPlanError(
                        f"adaptor step {step.first_layer}..{step.last_layer} is empty; "
                        "first_layer must be <= last_layer"
                    )
                covered.extend(range(step.first_layer, step.last_layer + 1))
            elif isinstance(step, int) and not isinstance(step, bool):
                covered.append(step)
            else:
                raise LayerPlanError(
                    f"plan step {step!r} is neither a layer index nor an AdaptorStep"
                )
        if covered != list(range(num_layers)):
            raise LayerPlanError(
                f"plan covers layers {covered}; it must cover 0..{num_layers - 1} exactly once, "
                "in order (use AdaptorStep for a replaced span)"
            )
        return self


def as_layer_plan(plan: LayerPlan | Sequence[LayerStep] | None, num_layers: int) -> LayerPlan:
    """Normalises None (all layers), a LayerPlan or a list of steps to a validated LayerPlan."""
    if plan is None:
        return LayerPlan.full(num_layers)
    if not isinstance(plan, LayerPlan):
        plan = LayerPlan(tuple(plan))
    return plan.validate(num_layers)
