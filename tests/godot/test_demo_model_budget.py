"""The demo's answer to back-pressure (`model_budget.gd` of demo_game_godot4/ in Godot 4 and of
demo_game/ in Godot 3), each run in its engine on a made-up timeline of `overloaded` signals
(scripts/model_budget_check.gd, model_budget_check3.gd): a short overload moves no enemy off
the model, a lasting one moves the farthest first, one every 2 s down to one, and calm brings
them back one every 5 s."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from godot4_run import CHROOT_TOOL, REPO_ROOT, require_godot4
from godot_run import require_godot

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def overloaded(active: bool) -> dict:
    return {"overloaded": active}


def phase(name: str, seconds: float) -> dict:
    """Let `seconds` pass (a multiple of 1/8 s), then record the budget as `name`."""
    return {"phase": name, "seconds": seconds}


TIMELINE = [
    phase("calm", 1.0),
    overloaded(True), phase("overloaded_1.5s", 1.5),
    overloaded(False), phase("recovered_1s", 1.0),
    overloaded(True),
    phase("overloaded_1.875s", 1.875),
    phase("overloaded_2s", 0.125),
    phase("overloaded_3.875s", 1.875),
    phase("overloaded_4s", 0.125),
    phase("overloaded_10s", 6.0),
    overloaded(False),
    phase("recovered_4.875s", 4.875),
    phase("recovered_5s", 0.125),
    phase("recovered_9.875s", 4.875),
    phase("recovered_10s", 0.125),
    phase("recovered_20s", 10.0),
]


def check_env() -> list[str]:
    """`env` and its assignments: the timeline and the budget script for the check scripts."""
    return ["env", f"LEGO_BUDGET_TIMELINE={json.dumps(TIMELINE)}"]


def godot4_command() -> list[str]:
    require_godot4()
    budget = REPO_ROOT / "demo_game_godot4" / "model_budget.gd"
    return [str(CHROOT_TOOL), "run", "--", *check_env(), f"LEGO_BUDGET_SCRIPT={budget}",
            "godot", "--headless", "--script", str(SCRIPTS / "model_budget_check.gd")]


def godot3_command() -> list[str]:
    require_godot()
    budget = REPO_ROOT / "demo_game" / "model_budget.gd"
    return [*check_env(), f"LEGO_BUDGET_SCRIPT={budget}", "xvfb-run", "-a", "godot3",
            "--no-window", "-s", str(SCRIPTS / "model_budget_check3.gd")]


@pytest.fixture(scope="module", params=["godot4", "godot3"])
def budget_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    command = godot4_command() if request.param == "godot4" else godot3_command()
    # Godot 4 runs in the chroot, where the repository is mounted; Godot 3 writes logs/ here
    workdir = REPO_ROOT if request.param == "godot4" else tmp_path_factory.mktemp("godot3")
    process = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                             cwd=workdir)
    lines = [line for line in process.stdout.splitlines() if line.startswith("BUDGET ")]
    assert process.returncode == 0 and lines, (
        f"the check did not finish (exit {process.returncode}):\n{process.stdout[-3000:]}\n"
        f"{process.stderr[-3000:]}"
    )
    result = json.loads(lines[-1].removeprefix("BUDGET "))
    result["by_phase"] = {phase["phase"]: phase for phase in result["phases"]}
    return result


def test_an_overload_shorter_than_two_seconds_moves_no_enemy(budget_run: dict) -> None:
    for phase in ("calm", "overloaded_1.5s", "recovered_1s", "overloaded_1.875s"):
        assert budget_run["by_phase"][phase]["on_model"] == 3, phase
        assert budget_run["by_phase"][phase]["enemies_on_model"] == [True, True, True], phase


def test_a_lasting_overload_moves_one_enemy_every_two_seconds_down_to_one(
    budget_run: dict,
) -> None:
    by_phase = budget_run["by_phase"]
    phases = ("overloaded_2s", "overloaded_3.875s", "overloaded_4s", "overloaded_10s")
    assert [by_phase[p]["on_model"] for p in phases] == [2, 2, 1, 1]
    assert budget_run["report"]["fewest_on_model"] == 1


def test_the_enemies_nearest_to_the_player_keep_the_model(budget_run: dict) -> None:
    by_phase = budget_run["by_phase"]
    # enemies at 9, 1 and 5 m: the 9 m one leaves first, the 1 m one stays
    assert by_phase["overloaded_2s"]["enemies_on_model"] == [False, True, True]
    assert by_phase["overloaded_10s"]["enemies_on_model"] == [False, True, False]


def test_calm_brings_one_enemy_back_every_five_seconds(budget_run: dict) -> None:
    by_phase = budget_run["by_phase"]
    phases = ("recovered_4.875s", "recovered_5s", "recovered_9.875s", "recovered_10s",
              "recovered_20s")
    assert [by_phase[p]["on_model"] for p in phases] == [1, 2, 2, 3, 3]
    assert by_phase["recovered_20s"]["enemies_on_model"] == [True, True, True]


def test_the_report_counts_overloaded_and_reduced_time(budget_run: dict) -> None:
    report = budget_run["report"]
    assert report["overloaded_signals"] == 4
    assert report["overloaded_s"] == pytest.approx(1.5 + 10.0)
    assert report["reduced_s"] == pytest.approx(8.0 + 10.0)
