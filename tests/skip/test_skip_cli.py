"""`lego-embed skip heatmap/build/eval` end to end on a tiny model (few steps, small data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lego_embed.cli import main
from lego_embed.skip.bundle import SkipBundle
from lego_embed.skip.evaluate import METHODS

SMALL = ["--calibration", "32", "--batch", "16"]


def test_heatmap_build_and_eval(tiny_npc_model_dir, tiny_loaded, tmp_path, capsys):
    model = str(tiny_npc_model_dir)
    assert main(["skip", "heatmap", "--model", model, *SMALL, "--out-npy",
                 str(tmp_path / "h.npy"), "--out-png", str(tmp_path / "h.png")]) == 0
    assert np.load(tmp_path / "h.npy").shape == (7, 7)
    assert (tmp_path / "h.png").stat().st_size > 10_000

    bundle_dir = tmp_path / "bundle"
    assert main(["skip", "build", "--model", model, *SMALL, "--budgets", "2", "1",
                 "--mse-steps", "40", "--kl-steps", "2", "--heldout", "24",
                 "--out", str(bundle_dir)]) == 0
    bundle = SkipBundle.load(bundle_dir, tiny_loaded)
    assert [lv.skipped_layers for lv in bundle.levels] == [1, 2]
    for lv in bundle.levels:
        assert lv.span.first_layer >= 1
        assert 0.0 <= lv.accuracy <= 1.0 and lv.perplexity > 1.0
        assert lv.cost_saving is not None and lv.distill["seconds"] > 0
    assert bundle.full_model["heldout_situations"] == 24

    out_json, out_png = tmp_path / "acc.json", tmp_path / "acc.png"
    assert main(["skip", "eval", "--model", model, *SMALL, "--bundle", str(bundle_dir),
                 "--heldout", "24", "--out-json", str(out_json), "--out-png", str(out_png)]) == 0
    report = json.loads(out_json.read_text())
    assert "loss_reduction_vs_plain_skip" in report
    assert [lv["skipped_layers"] for lv in report["levels"]] == [1, 2]
    for lv, level in zip(report["levels"], bundle.levels, strict=True):
        assert lv["span"] == [level.span.first_layer, level.span.last_layer]
        assert set(lv["accuracy"]) == set(METHODS) == set(lv["perplexity"])
        # the same held-out data as the build measured the manifest's accuracy on
        assert lv["accuracy"]["adaptor"] == pytest.approx(level.accuracy, abs=1e-4)
        assert -1.0 < lv["cost_saving"] < 1.0
    assert out_png.stat().st_size > 10_000
    capsys.readouterr()


def test_budgets_out_of_range_are_a_clear_error(tiny_npc_model_dir, tmp_path, capsys):
    code = main(["skip", "build", "--model", str(tiny_npc_model_dir), *SMALL, "--budgets", "6",
                 "--out", str(tmp_path / "b")])
    assert code == 2
    assert "--budgets must lie in 1..5" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_eval_without_a_bundle_says_how_to_build_one(tiny_npc_model_dir, tmp_path, capsys):
    code = main(["skip", "eval", "--model", str(tiny_npc_model_dir), *SMALL,
                 "--bundle", str(tmp_path / "none")])
    assert code == 2
    assert "skip build" in capsys.readouterr().err
