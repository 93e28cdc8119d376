"""Engine test of your own NPCs in a scene that is not the combat demo: a lamp keeper with its
own static prompt, template and actions streams lines token by token, picks actions, does both in
one request; mistakes come back as decision_failed and one log line per distinct problem. Run on
Godot 3 and Godot 4 (the same scenario in each engine's harness)."""

from __future__ import annotations

from pathlib import Path

import pytest
from godot4_run import ENGINES, run_on_engine
from godot_run import GodotRun, script_error_lines

pytestmark = [pytest.mark.godot, pytest.mark.slow]

BUNDLED = Path(__file__).resolve().parents[2] / "lego_embed" / "assets" / "npc_model"
KEEPER_ACTIONS = ["light the lamp", "wave", "close the door"]


FRAME_CAP_HZ = {"godot3": 60, "godot4": 30}  # the test projects' force_fps / max_fps


@pytest.fixture(scope="module", params=ENGINES)
def village(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> GodotRun:
    if not (BUNDLED / "config.json").is_file():
        pytest.skip(f"the bundled model is not built yet ({BUNDLED}); `make train-model`")
    # every keeper request is wanted and seven are sent at once: on a slow, loaded machine the
    # last ones wait past the runtime's 5 s overdue limit, so the harness raises that limit
    # (what is tested here is what the answers hold, not how soon they come)
    run = run_on_engine(request.param, "village", tmp_path_factory.mktemp(request.param),
                        env={"LEGO_EMBED_RUNTIME_OPTIONS": '{"overdue_limit_ms": 150000}'},
                        timeout_s=240.0)
    assert run.report is not None, f"the harness wrote no report; Godot said:\n{run.output[-4000:]}"
    assert not run.report["timed_out"], run.output[-4000:]
    return run


def test_streamed_tokens_joined_are_the_finished_line(village: GodotRun) -> None:
    lines = village.report["lines"]
    assert len(lines) >= 4
    for line in lines:
        pieces = line["tokens"]
        assert pieces, line
        assert "".join(p["text"] for p in pieces) == line["line"]
        indices = [p["index"] for p in pieces]
        assert indices[0] == 1 and indices == sorted(indices)
        assert line["info"]["line_tokens"] == indices[-1]
        for piece in pieces:  # 60 APM: first token due at 1000 ms, then one per 1/15 s
            assert piece["deadline_ms"] == pytest.approx(1000.0 + (piece["index"] - 1) * 1000 / 15)
            assert piece["deadline_met"] == (piece["latency_ms"] <= piece["deadline_ms"])


def test_own_actions_and_an_action_with_a_line(village: GodotRun) -> None:
    report = village.report
    actions = report["keeper_actions"]
    assert len(actions) >= 3 and all(a["action"] in KEEPER_ACTIONS for a in actions)
    spoken = [line for line in report["lines"] if line["info"]["action"] is not None]
    assert len(spoken) == 1 and spoken[0]["info"]["action"] in ("wave", "close the door")
    decided = {a["info"]["request_id"]: a["action"] for a in actions}
    assert decided[spoken[0]["info"]["request_id"]] == spoken[0]["info"]["action"]
    assert report["keeper_template_fields"] == ["visitor", "thing"]


def test_mistakes_fail_or_warn_once_and_the_game_keeps_running(village: GodotRun) -> None:
    report = village.report
    reasons = {f["npc"]: f["reason"] for f in report["failures"]}
    assert reasons["Broken"].startswith("PromptTemplateError:") and "malformed" in reasons["Broken"]
    assert "field 'thing' is missing" in reasons["Keeper"]
    output = village.output
    logged = report["logged"]
    unused = [line for line in logged if "field 'mood' is not in the prompt template" in line]
    assert len(unused) == 1 and logged[unused[0]] == 2  # two requests, one line in the log
    assert output.count("field 'mood' is not in the prompt template") == 1
    assert output.count("persona 'guard' was never trained") == 1
    assert output.count("state field 'stamina' is not used") == 1
    assert all(d["action"] in d["allowed"] for d in report["decisions"])


def test_the_frame_budget_comes_from_the_engine_and_the_log_is_clean(village: GodotRun) -> None:
    engine = "godot4" if "engine_version" in village.report else "godot3"
    assert village.report["frame_budget_ms"] == pytest.approx(1000.0 / FRAME_CAP_HZ[engine])
    assert "%|" not in village.output  # no progress bar from the model load
    assert script_error_lines(village.output) == []
