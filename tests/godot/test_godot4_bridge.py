"""Engine tests on Godot 4 (Debian sid's godot 4.x in a chroot, under Xvfb, Vulkan on lavapipe):
the GDExtension bridge with the real model, the same checks as the Godot 3 tests, and the GPU's
own timestamps mapped onto the runtime's clock.

One Godot run drives three LegoNPC nodes until they made >= 12 decisions, sends malformed
states and bad action lists in between, and quits; most tests read its report. Short runs check
a missing model (also on the OpenGL driver), a missing Python, quitting while the model loads,
and per-pass GPU timestamps (--gpu-profile).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from godot4_run import run_scenario4
from godot_run import GodotRun

pytestmark = [pytest.mark.godot, pytest.mark.slow]

BUNDLED = Path(__file__).resolve().parents[2] / "lego_embed" / "assets" / "npc_model"
FRAME_BUDGET_MS = 1000.0 / 30.0  # the test project's max_fps


def require_bundled_model() -> None:
    if not (BUNDLED / "config.json").is_file():
        pytest.skip(f"the bundled model is not built yet ({BUNDLED}); `make train-model`")


@pytest.fixture(scope="module")
def decisions_run(tmp_path_factory: pytest.TempPathFactory) -> GodotRun:
    require_bundled_model()
    run = run_scenario4("decisions", tmp_path_factory.mktemp("godot4"))
    assert run.report is not None, f"the harness wrote no report; Godot said:\n{run.output[-4000:]}"
    return run


def test_bridge_loads_python_and_the_bundled_model(decisions_run: GodotRun) -> None:
    report = decisions_run.report
    assert report["engine_version"].startswith("4.")
    assert report["rendering_driver"] == "vulkan"
    info = report["ready_info"]
    assert info["kind"] == "ready"
    assert Path(info["model"]).resolve() == BUNDLED.resolve()
    assert info["num_layers"] >= 16


def test_at_least_ten_decisions_all_in_the_allowed_set(decisions_run: GodotRun) -> None:
    report = decisions_run.report
    assert not report["timed_out"], report["final_stats"]
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
    assert any(r.startswith("TypeError:") and "Node3D" in r for r in reasons), reasons
    assert any(r.startswith("EngineBridgeError:") for r in reasons), reasons
    assert any(r.startswith("InvalidActionSetError:") for r in reasons), reasons
    for reason in reasons:
        assert f"/Faulty: {reason}" in decisions_run.output  # LegoRuntime's push_error line


def test_the_runtime_reports_a_healthy_worker(decisions_run: GodotRun) -> None:
    report = decisions_run.report
    assert report["health_changes"][-1] == {"state": "running", "restarts": 0,
                                            "last_error": None}
    assert report["final_health"] == report["health_changes"][-1]
    # the final stats are taken once the worker was stopped, cleanly
    assert report["final_stats"]["runtime"]["health"] == {"state": "stopped", "restarts": 0,
                                                          "last_error": None}
    assert report["final_stats"]["runtime"]["worker_faults"] == 0


def test_quitting_ends_the_process_cleanly(decisions_run: GodotRun) -> None:
    assert decisions_run.returncode == 0, decisions_run.output[-4000:]
    assert "Exception" not in decisions_run.output.replace("decision_failed", "")
    assert "handle_crash" not in decisions_run.output


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
    assert {"event", "poll", "request", "gpu_timestamps"} <= set(cost["by_call_us"])
    print(f"bridge main-thread cost per frame: {cost}")


def test_viewport_gpu_timestamps_are_mapped_onto_the_runtime_clock(
    decisions_run: GodotRun,
) -> None:
    report = decisions_run.report
    gpu = report["final_stats"]["gpu_timestamps"]
    # one read-back per drawn frame but the first (frame_delay - 1) ones; all reach Python
    assert report["final_stats"]["bridge"]["gpu_frames"] == report["gpu_frames_sent"]
    assert report["gpu_frames_sent"] >= report["frames_drawn"] - report["frame_delay"]
    assert gpu["frames"] == report["gpu_frames_sent"] and gpu["passes"] == ["viewport"]
    # read back at the end of the draw get_frame_delay() - 1 frames later, never before the end
    assert gpu["delay_frames_min"] == gpu["delay_frames_max"] == report["frame_delay"] - 1
    assert 0 < gpu["delay_ms_p50"] <= gpu["delay_ms_max"]
    # frame by frame, our viewport pass lasts what the engine measures from the same read-back
    # (viewport_get_measured_render_time_gpu; the engine takes the read-back in after
    # frame_post_draw, so its reading of the frame we got at draw D shows at draw D + 1)
    engine_ms = {int(drawn): ms for drawn, ms in report["measured_gpu_ms"].items()}
    pairs = [(ours, engine_ms[int(drawn) + 1]) for drawn, ours in gpu["last_busy_ms"]
             if engine_ms.get(int(drawn) + 1, 0.0) > 0]
    assert len(pairs) >= min(len(gpu["last_busy_ms"]) - 1, 20), (gpu, engine_ms)
    same = [ours == pytest.approx(engine, abs=0.01) for ours, engine in pairs]
    assert sum(same) >= 0.9 * len(pairs), pairs
    if "llvmpipe" in report["adapter"]:
        # lavapipe stamps the GPU timestamps with CLOCK_MONOTONIC itself: the true offset is 0,
        # and the estimate is a lower bound on it, off by at most a record-to-run latency
        assert -FRAME_BUDGET_MS * 1e6 < gpu["gpu_offset_ns"] <= 1000
    runtime = report["final_stats"]["runtime"]
    assert 0 < runtime["gpu_frames_seen"] <= gpu["frames"]
    assert "after:gpu:viewport" not in runtime["slot_estimates_ms"]  # not in the live tracker
    assert 0 < runtime["gpu_slot_estimates_ms"]["inter_frame"] <= FRAME_BUDGET_MS
    print(f"GPU timestamps: {gpu}; ours vs the engine's per frame: {pairs}")


def test_per_pass_gpu_timestamps_with_the_gpu_profile_on(tmp_path: Path) -> None:
    require_bundled_model()
    run = run_scenario4("gpu_passes", tmp_path, godot_args=("--gpu-profile",))
    assert run.returncode == 0, run.output[-4000:]
    assert run.report is not None and not run.report["timed_out"], run.output[-4000:]
    gpu = run.report["final_stats"]["gpu_timestamps"]
    assert {"Render Opaque Pass", "Render Depth Pre-Pass", "Tonemap"} <= set(gpu["passes"])
    assert "viewport" not in gpu["passes"]  # the viewport markers split no pass
    runtime = run.report["final_stats"]["runtime"]
    assert runtime["gpu_frames_seen"] > 0
    assert "after:gpu:Render Opaque Pass" in runtime["gpu_slot_estimates_ms"]
    window_ms = 300.0
    assert all(0 <= ms <= window_ms + 1e-6 for ms in runtime["gpu_window_headroom_ms"])
    assert "GPU PROFILE" in run.output  # what --gpu-profile costs: a profile printed every second


def test_a_missing_model_gives_one_clear_error(tmp_path: Path) -> None:
    run = run_scenario4(
        "missing_model", tmp_path, {"LEGO_EMBED_MODEL": str(tmp_path / "no_such_model")}, 90.0
    )
    assert run.returncode == 0, run.output[-4000:]
    assert run.report is not None and not run.report["timed_out"]
    failure = run.report["runtime_failure"]
    assert "ModelNotFoundError" in failure and "no_such_model" in failure
    assert run.output.count("the NPC model did not load") == 1
    assert run.report["failures"][0]["reason"] == failure
    health = run.report["final_health"]  # a worker that never ran is a failed one
    assert health["state"] == "failed" and "no_such_model" in health["last_error"]
    assert run.report["health_changes"][-1] == health


def test_the_opengl_driver_reports_frames_without_gpu_timestamps(tmp_path: Path) -> None:
    run = run_scenario4(
        "missing_model", tmp_path, {"LEGO_EMBED_MODEL": str(tmp_path / "no_such_model")}, 90.0,
        godot_args=("--rendering-driver", "opengl3"),
    )
    assert run.returncode == 0, run.output[-4000:]
    report = run.report
    assert report["rendering_driver"] == "opengl3" and report["frame_delay"] == -1
    assert report["gpu_frames_sent"] == 0
    events = report["final_stats"]["events"]
    assert events["frame_end"] == report["frames_drawn"] > 0


def test_a_missing_python_gives_one_clear_error(tmp_path: Path) -> None:
    run = run_scenario4(
        "missing_model", tmp_path, {"LEGO_EMBED_PYTHON": str(tmp_path / "bin" / "python")}, 60.0
    )
    assert run.returncode == 0, run.output[-4000:]
    failure = run.report["runtime_failure"]
    assert "Python executable" in failure and "not found" in failure
    assert run.output.count("Python executable") == 1


def test_quitting_while_the_model_loads_exits_with_code_zero(tmp_path: Path) -> None:
    run = run_scenario4("quit_early", tmp_path, {}, 90.0)
    assert run.returncode == 0, run.output[-4000:]
    assert run.report is not None and not run.report["timed_out"]
    assert run.report["ready_info"] == {}  # it really quit before the model was ready
    assert "Segmentation fault" not in run.output and "handle_crash" not in run.output
