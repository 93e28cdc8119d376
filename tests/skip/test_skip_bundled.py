"""The bundle shipped with the bundled NPC model: it loads, belongs to that model, has the
promised levels, and its levels run in the executor exactly like the reference."""

from __future__ import annotations

import pytest
import torch

from lego_embed.model.executor import Executor, GreedySampler
from lego_embed.model.loading import BUNDLED_MODEL_DIR, load_model
from lego_embed.skip.bundle import MANIFEST_NAME, SkipBundle
from lego_embed.skip.reference import plan_logits
from lego_embed.tasks.combat.decide import prepare_decision
from lego_embed.tasks.combat.evaluation import heldout_situations
from lego_embed.tasks.combat.policy import ACTIONS

BUNDLE_DIR = BUNDLED_MODEL_DIR / "skip_bundle"


@pytest.fixture(scope="module")
def bundled():
    if not (BUNDLED_MODEL_DIR / "config.json").is_file():
        pytest.skip(f"the bundled model is not in {BUNDLED_MODEL_DIR} yet")
    if not (BUNDLE_DIR / MANIFEST_NAME).is_file():
        pytest.skip(f"no skip bundle in {BUNDLE_DIR}; build it with `lego-embed skip build`")
    torch.set_num_threads(1)
    loaded = load_model("bundled")
    return loaded, SkipBundle.load(BUNDLE_DIR, loaded)


def test_bundle_matches_the_bundled_model_and_has_its_levels(bundled):
    loaded, bundle = bundled
    bundle.check_model(loaded)
    assert [lv.skipped_layers for lv in bundle.levels] == [2, 4, 6, 8]
    for lv in bundle.levels:
        assert lv.span.first_layer >= 1 and lv.span.last_layer < loaded.num_layers
        assert lv.accuracy is not None and lv.perplexity is not None
        assert lv.cost_saving is not None and lv.cost_saving > 0.0
    total = sum(lv.adaptor_bytes for lv in bundle.levels)
    assert bundle.manifest()["total_resident_bytes"] == total
    assert bundle.full_model["accuracy"] is not None


def test_bundled_levels_run_in_the_executor_like_the_reference(bundled):
    loaded, bundle = bundled
    executor = Executor(loaded)
    prepared = prepare_decision(loaded.tokenizer, heldout_situations(1)[0], ACTIONS)
    prompt = list(prepared.prompt_ids)
    for level in range(bundle.max_level + 1):
        plan = bundle.plan(level)
        state = executor.start(prompt, GreedySampler(None, 1), layer_plan=plan)
        executor.run_to_completion(state)
        logits = plan_logits(loaded.model, torch.tensor([prompt]), None, plan)[0, -1]
        assert state.generated == [int(logits.argmax())]
