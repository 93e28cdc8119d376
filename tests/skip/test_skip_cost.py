"""Cost saving measurement through the executor (no timed assertions: only its bookkeeping)."""

from __future__ import annotations

import math

import pytest
from skip_helpers import random_bundle, task_examples

from lego_embed.model.layer_plan import LayerPlan
from lego_embed.skip.cost import measure_cost_savings


def test_cost_savings_are_keyed_like_the_plans_and_zero_for_the_full_plan(tiny_loaded):
    bundle = random_bundle(tiny_loaded, [(4, 5), (2, 5)])
    prompt = task_examples(tiny_loaded.tokenizer, 1, seed=31)[0][0].prompt_ids
    plans = {1: bundle.plan(1), 2: bundle.plan(2), 7: LayerPlan.full(tiny_loaded.num_layers)}
    savings = measure_cost_savings(tiny_loaded, plans, prompt, decode_tokens=2, repeats=2)
    assert set(savings) == {1, 2, 7}
    # the same subtasks with the same pooled medians: exactly no saving
    assert savings[7] == 0.0
    assert all(math.isfinite(v) and v < 1.0 for v in savings.values())
    with pytest.raises(ValueError):
        measure_cost_savings(tiny_loaded, plans, prompt, repeats=0)
