"""The cost profile measures every subtask kind, round-trips as JSON, and interpolates."""

from __future__ import annotations

import json

import pytest
from model_helpers import save_tiny_model

from lego_embed.cli import main
from lego_embed.errors import CostProfileError
from lego_embed.model.loading import load_model
from lego_embed.model.profile import CostEntry, CostProfile, measure_cost_profile


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("llama"), "llama")


def test_profile_measures_every_kind_at_every_length(model_folder, tmp_path):
    loaded = load_model(model_folder)
    profile = measure_cost_profile(
        loaded,
        prompt_lengths=(4, 8, 500),
        context_lengths=(4, 12),
        batch_sizes=(2,),
        warmup=1,
        repeats=2,
    )
    shapes = {(e.kind, e.phase, e.tokens, e.context_tokens): e for e in profile.entries}
    for n in (4, 8, 127):  # 500 is beyond the 128-token context: measured at 127
        for kind in ("embed", "attention", "ffn"):
            assert (kind, "prefill", n, n) in shapes
        assert ("head", "prefill", 1, n) in shapes
    for context in (4, 12):
        for batch in (1, 2):
            assert ("layer", "decode", batch, context) in shapes
            assert ("head", "decode", batch, context) in shapes
    assert len(shapes) == 3 * 4 + 2 * 2 * 2
    assert shapes[("attention", "prefill", 8, 8)].samples == 2 * loaded.num_layers
    assert shapes[("layer", "decode", 2, 12)].samples == 2 * loaded.num_layers
    assert all(0 < e.min_us <= e.median_us <= e.p90_us for e in profile.entries)
    profile.save(tmp_path / "p.json")
    assert CostProfile.load(tmp_path / "p.json") == profile
    between = profile.cost_us("attention", "prefill", 6, 6)
    low, high = shapes[("attention", "prefill", 4, 4)], shapes[("attention", "prefill", 8, 8)]
    assert between == pytest.approx((low.median_us + high.median_us) / 2)


def make_profile(entries):
    return CostProfile("m", "llama", "cpu", "float32", 2, 1, 0, 1, "now", entries)


def test_cost_us_interpolates_along_context_and_batch_size():
    profile = make_profile(
        [
            CostEntry("layer", "decode", 1, 16, 100.0, 120.0, 5),
            CostEntry("layer", "decode", 1, 32, 140.0, 150.0, 5),
            CostEntry("layer", "decode", 2, 16, 150.0, 160.0, 5),
            CostEntry("layer", "decode", 2, 32, 190.0, 200.0, 5),
            CostEntry("head", "decode", 1, 16, 30.0, 40.0, 5),
            CostEntry("ffn", "prefill", 16, 16, 50.0, 60.0, 5),
            CostEntry("ffn", "prefill", 64, 64, 170.0, 180.0, 5),
        ]
    )
    assert profile.cost_us("layer", "decode", 1, 24) == pytest.approx(120.0)
    assert profile.cost_us("layer", "decode", 1, 48) == pytest.approx(180.0)
    assert profile.cost_us("layer", "decode", 1, 8) == pytest.approx(100.0)
    assert profile.cost_us("layer", "decode", 2, 24) == pytest.approx(170.0)
    assert profile.cost_us("layer", "decode", 4, 16) == pytest.approx(250.0)
    assert profile.cost_us("head", "decode", 3, 16) == pytest.approx(90.0)
    assert profile.cost_us("ffn", "prefill", 40, 40) == pytest.approx(110.0)
    with pytest.raises(CostProfileError, match="no decode adaptor entries"):
        profile.cost_us("adaptor", "decode", 1, 16)


def test_load_reports_missing_and_malformed_files(tmp_path):
    with pytest.raises(CostProfileError, match="lego-embed profile"):
        CostProfile.load(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text(json.dumps({"model": "m"}))
    with pytest.raises(CostProfileError, match="not a cost profile"):
        CostProfile.load(tmp_path / "bad.json")


def test_cli_writes_a_profile(model_folder, tmp_path, capsys):
    out = tmp_path / "profile.json"
    code = main(
        [
            "profile",
            "--model",
            str(model_folder),
            "--out",
            str(out),
            "--prompt-lengths",
            "4,8",
            "--context-lengths",
            "6",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--plot",
            str(tmp_path / "profile.png"),
        ]
    )
    assert code == 0
    assert (tmp_path / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert CostProfile.load(out).num_layers == 4
    assert "attention" in capsys.readouterr().out


def test_cli_reports_a_missing_model(tmp_path, capsys):
    assert main(["profile", "--model", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
