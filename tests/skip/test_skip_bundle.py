"""SkipBundle: save/load round trip, plans, manifest, and typed errors on bad bundles."""

from __future__ import annotations

import json

import pytest
import torch
from skip_helpers import NUM_LAYERS, random_bundle, save_tiny_npc_model

from lego_embed.errors import SkipBundleError
from lego_embed.model.layer_plan import AdaptorStep
from lego_embed.model.loading import load_model
from lego_embed.skip.bundle import MANIFEST_NAME, WEIGHTS_NAME, SkipBundle
from lego_embed.skip.reference import plan_logits

SPANS = [(4, 5), (2, 5)]


def test_round_trip_keeps_levels_adaptors_and_plans(tiny_loaded, tmp_path):
    bundle = random_bundle(tiny_loaded, SPANS).with_measurements(1, accuracy=0.9, cost_saving=0.3)
    bundle.save(tmp_path / "b")
    loaded_bundle = SkipBundle.load(tmp_path / "b", tiny_loaded)
    assert [lv.span for lv in loaded_bundle.levels] == [lv.span for lv in bundle.levels]
    assert loaded_bundle.level(1).accuracy == 0.9 and loaded_bundle.level(1).cost_saving == 0.3
    assert loaded_bundle.level(2).accuracy is None
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    for level in range(3):
        torch.testing.assert_close(
            plan_logits(tiny_loaded.model, ids, None, loaded_bundle.plan(level)),
            plan_logits(tiny_loaded.model, ids, None, bundle.plan(level)))
    manifest = json.loads((tmp_path / "b" / MANIFEST_NAME).read_text())
    assert [lv["skipped_layers"] for lv in manifest["levels"]] == [2, 4]
    assert [lv["span"] for lv in manifest["levels"]] == [[4, 5], [2, 5]]
    per_level = [lv["adaptor_bytes"] for lv in manifest["levels"]]
    assert per_level == [(64 + 2 * 64 * 32) * 4] * 2
    assert manifest["total_resident_bytes"] == sum(per_level) == loaded_bundle.total_resident_bytes
    assert manifest["model"]["num_layers"] == NUM_LAYERS
    assert len(manifest["model"]["weights_sha256"]) == 64


def test_plan_replaces_exactly_the_span(tiny_loaded):
    bundle = random_bundle(tiny_loaded, SPANS)
    assert bundle.plan(0).steps == tuple(range(NUM_LAYERS))
    steps = bundle.plan(2).steps
    assert steps[:2] == (0, 1)
    assert isinstance(steps[2], AdaptorStep)
    assert (steps[2].first_layer, steps[2].last_layer) == (2, 5)
    assert steps[2].module is bundle.adaptors[2]
    assert bundle.plan(2).skipped_layers == 4
    with pytest.raises(SkipBundleError, match="levels 1..2"):
        bundle.plan(3)


def test_missing_and_malformed_bundles_are_typed_errors(tiny_loaded, tmp_path):
    with pytest.raises(SkipBundleError, match="skip build"):
        SkipBundle.load(tmp_path / "nothing")
    random_bundle(tiny_loaded, SPANS).save(tmp_path / "b")
    manifest_path = tmp_path / "b" / MANIFEST_NAME
    good = manifest_path.read_text()

    manifest_path.write_text("{not json")
    with pytest.raises(SkipBundleError, match="not valid JSON"):
        SkipBundle.load(tmp_path / "b")

    data = json.loads(good)
    data["format_version"] = 99
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(SkipBundleError, match="format_version"):
        SkipBundle.load(tmp_path / "b")

    data = json.loads(good)
    del data["levels"][0]["span"]
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(SkipBundleError, match="malformed"):
        SkipBundle.load(tmp_path / "b")

    data = json.loads(good)
    data["levels"][0]["span"] = [0, 1]
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(SkipBundleError, match="layer 0 always runs"):
        SkipBundle.load(tmp_path / "b")

    data = json.loads(good)
    data["levels"][0]["adaptor_shape"]["intermediate_size"] = 16
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(SkipBundleError, match="damaged"):
        SkipBundle.load(tmp_path / "b")

    manifest_path.write_text(good)
    (tmp_path / "b" / WEIGHTS_NAME).unlink()
    with pytest.raises(SkipBundleError, match="missing"):
        SkipBundle.load(tmp_path / "b")


def test_a_bundle_for_another_model_is_refused(tiny_loaded, tmp_path):
    random_bundle(tiny_loaded, SPANS).save(tmp_path / "b")
    other = load_model(save_tiny_npc_model(tmp_path / "other", seed=1))
    with pytest.raises(SkipBundleError, match="another model"):
        SkipBundle.load(tmp_path / "b", other)
    assert SkipBundle.load(tmp_path / "b", tiny_loaded).max_level == 2
