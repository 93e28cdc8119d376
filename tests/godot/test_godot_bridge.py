"""Engine tests: real Godot 3 (Debian's godot3) under Xvfb, with the real bridge and model.

One Godot run drives three LegoNPC nodes until they made >= 12 decisions, sends malformed
states and bad action lists in between, and quits; the tests below read its report. Two short
runs check the failures a developer meets first: a missing model and a missing Python. The
stall and overload tests run on both engines (Godot 4: the same scenarios of
tests/godot/project4 in the chroot, tests/godot/godot4_run.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from godot4_run import ENGINES, run_on_engine
from godot_run import GodotRun, run_scenario

pytestmark = [pytest.mark.godot, pytest.mark.slow]

BUNDLED = Path(__file__).resolve().parents[2] / "lego_embed" / "assets" / "npc_model"


@pytest.fixture(scope="module")
def decisions_run(tmp_path_factory: pytest.TempPathFactory) -> GodotRun:
    if not (BUNDLED / "config.json").is_file():
        pytest.skip(f"the bundled model is not built yet ({BUNDLED}); `make train-model`")
    run = run_scenario("decisions", tmp_path_factory.mktemp("godot"))
    assert run.report is not None, f"the harness wrote no report; Godot said:\n{run.output[-4000:]}"
    return run


def test_bridge_loads_python_and_the_bundled_model(decisions_run: GodotRun) -> None:
    info = decisions_run.report["ready_info"]
    assert info["kind"] == "ready"
    assert Path(info["model"]).resolve() == BUNDLED.resolve()
    assert info["num_layers"] >= 16


def test_at_least_ten_decisions_all_in_the_allowed_set(decisions_run: GodotRun) -> None:
    report = decisions_run.report
    assert not report["timed_out"], report
    made = [d for d in report["decisions"] if d["npc"] != "Faulty"]
    assert len(made) >= 10
    for decision in made:
        assert decision["action"] in decision["allowed"], decision
        info = decision["info"]
        assert info["latency_ms"] > 0
        assert isinstance(info["deadline_met"], bool)
        assert info["skip_level"] >= 0
        assert info["deadline_ms"] == pytest.approx(300.0)


def _reasons(run: GodotRun) -> list[str]:
    return [f["reason"] for f in run.report["failures"] if f["npc"] == "Faulty"]


def test_malformed_states_fail_with_a_message_and_the_game_keeps_running(
    decisions_run: GodotRun,
) -> None:
    report = decisions_run.report
    reasons = _reasons(decisions_run)
    assert any("'hp'" in r and "missing" in r for r in reasons), reasons
    assert any("'distance'" in r and "finite" in r for r in reasons), reasons
    assert any("'hp'" in r and "expected a number" in r for r in reasons), reasons
    assert report["decisions_after_faults"] >= 3
    assert report["frames_drawn"] > report["frames_at_faults"] >= 0


def test_python_exceptions_become_decision_failed_and_error_lines(decisions_run: GodotRun) -> None:
    reasons = _reasons(decisions_run)
    assert len(reasons) == decisions_run.report["faults_sent"] == 6
    assert any(r.startswith("TypeError:") and "Node" in r for r in reasons), reasons
    assert any(r.startswith("EngineBridgeError:") for r in reasons), reasons
    assert any(r.startswith("InvalidActionSetError:") for r in reasons), reasons
    for reason in reasons:
        assert f"/Faulty: {reason}" in decisions_run.output  # LegoRuntime's push_error line


def test_quitting_ends_the_process_cleanly(decisions_run: GodotRun) -> None:
    assert decisions_run.returncode == 0, decisions_run.output[-4000:]
    assert "Exception" not in decisions_run.output.replace("decision_failed", "")


def test_frame_events_reach_the_runtime(decisions_run: GodotRun) -> None:
    report = decisions_run.report
    stats = report["final_stats"]
    frames = report["frames_drawn"]
    assert frames == report["engine_frames"] > 0
    assert stats["events"]["frame_end"] == frames
    assert stats["events"]["frame_begin"] == frames + 1  # the quitting frame has begun
    assert stats["bridge"]["events_dropped"] == 0
    assert stats["bridge"]["events_refused"] == 1  # the harness's one unknown kind
    errors = decisions_run.report["errors"]
    assert sum("engine event(s) of an unknown kind" in e for e in errors) == 1
    assert stats["bridge"]["events_pushed"] == sum(stats["events"].values())
    assert stats["bridge"]["requests"] == stats["requests"]
    forwarded = stats["events_forwarded"]
    assert 0 < forwarded["frame_end"] <= frames
    # the worker read the events itself (none before the model was ready) and applied them all,
    # those it read between subtasks when it was stopped too
    assert stats["runtime"]["frames_seen"] == forwarded["frame_begin"]
    # it slept between gaps, and the engine rang its bell only for gap-opening events
    gap_openers = sum(stats["events"].values()) - stats["events"]["pass_begin"]
    assert 0 < stats["bridge"]["event_bell_rings"] <= gap_openers
    assert stats["runtime"]["wake_lag_us"]["n"] > 0


def test_bridge_main_thread_cost_is_measured_per_frame(decisions_run: GodotRun) -> None:
    cost = decisions_run.report["bridge_cost"]
    assert cost["frames"] == decisions_run.report["frames_drawn"]
    assert 0 <= cost["p50_us"] <= cost["p99_us"] <= cost["max_us"]
    assert math.isfinite(cost["mean_us"])
    assert {"event", "poll", "request"} <= set(cost["by_call_us"])
    print(f"bridge main-thread cost per frame: {cost}")


def test_a_missing_model_gives_one_clear_error(tmp_path: Path) -> None:
    run = run_scenario(
        "missing_model", tmp_path, {"LEGO_EMBED_MODEL": str(tmp_path / "no_such_model")}, 90.0
    )
    assert run.returncode == 0, run.output[-4000:]
    assert run.report is not None and not run.report["timed_out"]
    failure = run.report["runtime_failure"]
    assert "ModelNotFoundError" in failure and "no_such_model" in failure
    assert run.output.count("the NPC model did not load") == 1
    assert run.report["failures"][0]["reason"] == failure


def test_a_missing_python_gives_one_clear_error(tmp_path: Path) -> None:
    run = run_scenario(
        "missing_model", tmp_path, {"LEGO_EMBED_PYTHON": str(tmp_path / "bin" / "python")}, 60.0
    )
    assert run.returncode == 0, run.output[-4000:]
    failure = run.report["runtime_failure"]
    assert "Python executable" in failure and "not found" in failure
    assert run.output.count("Python executable") == 1


def test_quitting_while_the_model_loads_exits_with_code_zero(tmp_path: Path) -> None:
    run = run_scenario("quit_early", tmp_path, {}, 90.0)
    assert run.returncode == 0, run.output[-4000:]
    assert run.report is not None and not run.report["timed_out"]
    assert run.report["ready_info"] == {}  # it really quit before the model was ready
    assert "Segmentation fault" not in run.output


def test_the_runtime_reports_a_healthy_worker(decisions_run: GodotRun) -> None:
    report = decisions_run.report
    assert report["health_changes"][-1] == {"state": "running", "restarts": 0,
                                            "last_error": None}
    # the final stats are taken once the worker was stopped, cleanly
    assert report["final_stats"]["runtime"]["health"] == {"state": "stopped", "restarts": 0,
                                                          "last_error": None}
    assert report["final_stats"]["runtime"]["worker_faults"] == 0


@pytest.fixture(scope="module", params=ENGINES)
def stall_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> GodotRun:
    if not (BUNDLED / "config.json").is_file():
        pytest.skip(f"the bundled model is not built yet ({BUNDLED}); `make train-model`")
    run = run_on_engine(request.param, "stall", tmp_path_factory.mktemp(f"{request.param}_stall"))
    assert run.report is not None, f"the harness wrote no report; Godot said:\n{run.output[-4000:]}"
    return run


def test_decisions_resume_after_the_main_thread_stalls_for_two_seconds(
    stall_run: GodotRun,
) -> None:
    report = stall_run.report
    assert not report["timed_out"], report
    stall_us = report["stall_end_usec"] - report["stall_begin_usec"]
    assert stall_us >= 2_000_000  # the engine's own clock: the stall really happened
    after = [d for d in report["decisions"] if d["issued_usec"] > report["stall_end_usec"]]
    assert len(after) >= 6
    assert all(d["action"] in d["allowed"] for d in after)
    # the requests in flight during the stall were answered too, after it, and nothing failed
    in_flight = [d for d in report["decisions"]
                 if d["issued_usec"] < report["stall_begin_usec"] < d["usec"]]
    assert len(in_flight) == 3 and all(d["usec"] > report["stall_end_usec"] for d in in_flight)
    assert report["failures"] == []
    # every request but the last one of each NPC (in flight at quit) got its answer
    assert len(report["decisions"]) >= report["requests_sent"] - 3
    # Enemy0 has a fallback action: its request sent just before the stall got it, flagged,
    # by the runtime's clock during the stall (the game saw it after the stall)
    for decision in in_flight:
        info = decision["info"]
        if decision["npc"] != "Enemy0":
            assert not info["fallback"] and info["status"] == "decided"
        elif info["latency_ms"] >= info["deadline_ms"]:
            assert info["fallback"] and decision["action"] == "block"
            answered_usec = decision["issued_usec"] + info["latency_ms"] * 1000.0
            assert answered_usec < report["stall_end_usec"]
    assert any(d["info"]["fallback"] for d in in_flight)


def test_a_stall_is_no_bridge_error_and_the_game_exits_cleanly(stall_run: GodotRun) -> None:
    report = stall_run.report
    assert stall_run.returncode == 0, stall_run.output[-4000:]
    assert report["errors"] == []
    assert "Exception" not in stall_run.output and "Traceback" not in stall_run.output
    assert [h["state"] for h in report["health_changes"]] == ["running"]
    stats = report["final_stats"]
    assert stats["bridge"]["events_dropped"] == 0
    runtime_stats = stats["runtime"]
    assert runtime_stats["health"] == {"state": "stopped", "restarts": 0, "last_error": None}
    assert runtime_stats["errors"] == 0 and runtime_stats["overdue_requests"] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_overloaded_fires_when_npcs_ask_more_than_the_model_sustains(
    engine: str, tmp_path: Path
) -> None:
    if not (BUNDLED / "config.json").is_file():
        pytest.skip(f"the bundled model is not built yet ({BUNDLED}); `make train-model`")
    run = run_on_engine(engine, "overload", tmp_path)
    assert run.report is not None, f"the harness wrote no report; Godot said:\n{run.output[-4000:]}"
    report = run.report
    assert not report["timed_out"], report["overload_signals"]
    first = report["overload_signals"][0]
    assert first["active"] and report["final_overloaded"]
    info = first["info"]
    assert info["demand_per_s"] > info["sustainable_per_s"] > info["target_per_s"] > 0
    assert info["full_model_per_s"] <= info["sustainable_per_s"]
    # 10 ms deadlines: most answers are the fallback, flagged; none is lost or failed
    fallbacks = [d for d in report["decisions"] if d["info"]["fallback"]]
    assert fallbacks and all(d["action"] == "block" for d in fallbacks)
    assert report["failures"] == [] and report["errors"] == []
    assert run.returncode == 0
