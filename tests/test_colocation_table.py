"""tools/colocation_table.py's count of issue 12's targets, on a small hand-made report."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location(
        "colocation_table", REPO_ROOT / "tools" / "colocation_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spread(mean: float, low: float | None = None, high: float | None = None) -> dict:
    return {"mean": mean, "min": mean if low is None else low,
            "max": mean if high is None else high}


def main_row(policy: str, npcs: int, slo: float, added: dict, fill: float) -> dict:
    return {"section": "main", "trace": "t", "apm": 300, "npcs": npcs, "policy": policy,
            "slo_attainment": spread(slo), "added_frame_miss_rate": added,
            "backlogged_fill": spread(fill), "backlogged_fill_inter": spread(fill + 0.1),
            "backlogged_fill_intra": None}


def regime_row(npcs: int, policy: str, slo: float, accuracy: float, ablation: str = "") -> dict:
    return {"section": "regime", "trace": "t", "npcs": npcs, "policy": policy,
            "ablation": ablation, "slo_attainment": spread(slo),
            "expected_accuracy": spread(accuracy)}


def test_targets_are_counted_at_their_bounds() -> None:
    tool = load_tool()
    rows = [
        main_row("lego", 1, 0.99, spread(0.005, 0.0, 0.01), 0.7),  # at the bound: met
        main_row("lego", 1, 0.989, spread(0.0), 0.8),
        main_row("lego", 4, 0.95, spread(0.0), 0.6),
        main_row("free", 4, 1.0, spread(0.02), 0.9),
        # regime: met; accuracy equal at 3 digits; SLO below static_skip's; SLO under 0.95
        regime_row(5, "lego", 0.96, 0.90), regime_row(5, "static_skip", 0.96, 0.85),
        regime_row(6, "lego", 1.0, 0.8444), regime_row(6, "static_skip", 1.0, 0.8441),
        regime_row(7, "lego", 0.96, 0.90), regime_row(7, "static_skip", 0.97, 0.85),
        regime_row(8, "lego", 0.94, 0.90), regime_row(8, "static_skip", 0.50, 0.85),
        regime_row(8, "lego", 1.0, 0.99, ablation="no_level_floor"),
    ]
    regret = [{"skip_regret": spread(0.01), "slo_attainment_lego": spread(0.80),
               "slo_attainment_oracle": spread(0.81)},
              {"skip_regret": spread(0.02), "slo_attainment_lego": spread(0.80),
               "slo_attainment_oracle": spread(0.90)}]
    lines = tool.targets_summary(rows, regret)
    assert "- `lego` SLO >= 0.99 with 1 NPC(s): 1 of 2 settings" in lines
    assert "- `lego` SLO >= 0.95 with 4 NPC(s): 1 of 1 settings" in lines
    assert "- `lego` added frame-miss rate <= 0.005 (mean): 3 of 3" in lines
    assert "- `lego` added frame-miss rate <= 0.005 (largest run): 2 of 3" in lines
    assert any(line.startswith("- backlogged fill, `lego`") and
               "0.700 [0.600, 0.800] / 0.800 [0.700, 0.900] / -" in line for line in lines)
    assert ("- regime: `lego` SLO >= 0.95 at equal or better SLO and higher expected accuracy "
            "than `static_skip`: 1 of 4 settings") in lines
    assert "- skip_regret <= 0.01: 1 of 2; `lego` SLO >= oracle's - 0.01: 1; both: 1" in lines
