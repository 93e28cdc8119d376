"""The Python side of the Godot bridge, without Godot: request parsing, settings, results."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lego_embed.engines.godot import (
    BridgeConfig,
    decision_result,
    failed_result,
    overload_result,
    parse_request,
    parse_request_options,
    to_json,
)
from lego_embed.errors import EngineBridgeError, InvalidGameStateError
from lego_embed.runtime.backpressure import OverloadEvent
from lego_embed.runtime.runtime import Decision

STATE = {"hp": 50, "enemy_hp": 80, "distance": 3.5, "enemy_last_action": "idle",
         "cooldowns": {"dodge": 0, "heal": 0, "heavy": 2}, "allies": 1, "persona": "brute"}


def test_a_request_as_the_c_bridge_writes_it_is_parsed() -> None:
    text = json.dumps(["/root/Arena/Brute", STATE, ["block", "heal"], 300])
    npc_id, state, actions, deadline_ms = parse_request(json.loads(text))
    assert (npc_id, state, actions) == ("/root/Arena/Brute", STATE, ["block", "heal"])
    assert deadline_ms == 300.0
    assert isinstance(deadline_ms, float)


def test_nan_from_godot_survives_the_json_hop_for_validation_to_reject() -> None:
    payload = json.loads('["npc", {"distance": NaN}, ["block"], 300]')
    assert math.isnan(parse_request(payload)[1]["distance"])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (["npc", [], ["block"], 300], "state must be a Dictionary"),
        (["npc", STATE, [1, 2], 300], "Array of Strings"),
        (["npc", STATE, "block", 300], "Array of Strings"),
        (["npc", STATE, ["block"], "soon"], "deadline_ms must be a number"),
        (["npc", STATE, ["block"], True], "deadline_ms must be a number"),
    ],
)
def test_malformed_requests_raise_a_typed_error(payload: list, message: str) -> None:
    with pytest.raises(EngineBridgeError, match=message):
        parse_request(payload)


def test_settings_are_checked() -> None:
    assert BridgeConfig.from_mapping({"model": "bundled", "sys_path": ["/x"]}).model == "bundled"
    for bad, message in [
        ({"model": ""}, "model/path"),
        ({"torch_threads": 0}, "torch_threads"),
        ({"switch_interval_ms": 0}, "switch_interval_ms"),
        ({"runtime_options": []}, "options"),
    ]:
        with pytest.raises(EngineBridgeError, match=message):
            BridgeConfig.from_mapping(bad)


def test_results_carry_the_bridge_request_id_and_a_readable_error() -> None:
    decision = Decision(7, "npc", "block", 41.5, 0, 0, 2, 300.0, True, None)
    result = decision_result(3, decision)
    assert result["kind"] == "decision" and result["request_id"] == 3
    assert result["runtime_request_id"] == 7 and result["action"] == "block"
    failed = failed_result(4, "npc", InvalidGameStateError("hp", "missing"))
    assert failed["error"] == "InvalidGameStateError: game state field 'hp': missing"
    assert failed["action"] is None and failed["request_id"] == 4


def test_numpy_numbers_become_plain_json() -> None:
    text = to_json({"p50": np.float64(1.5), "n": np.int64(3), "other": object})
    assert json.loads(text)["p50"] == 1.5 and json.loads(text)["n"] == 3


def test_request_options_become_runtime_keyword_arguments() -> None:
    payload = json.loads(json.dumps(["npc", STATE, ["block", "heal"], 300,
                                     {"fallback": "block", "supersede": False}]))
    assert parse_request(payload)[0] == "npc"
    assert parse_request_options(payload) == {"fallback": "block", "supersede": False}
    assert parse_request_options(["npc", STATE, ["block"], 300, {"fallback": ""}]) == {}
    assert parse_request_options(["npc", STATE, ["block"], 300]) == {}
    for options, message in [({"fallback": 3}, "'fallback' must be a str"),
                             ({"supersede": "yes"}, "'supersede' must be a bool"),
                             ({"deadline": 1}, "unknown request option 'deadline'"),
                             (["block"], "must be a Dictionary")]:
        with pytest.raises(EngineBridgeError, match=message):
            parse_request_options(["npc", STATE, ["block"], 300, options])
    with pytest.raises(EngineBridgeError, match="deadline_ms"):
        parse_request(["npc", STATE, ["block"]])


def test_fallbacks_and_overload_events_reach_the_engine_as_results() -> None:
    fallback = Decision(9, "npc", "block", 300.0, 0, 0, 0, 300.0, False, None, status="fallback")
    result = decision_result(5, fallback)
    assert result["status"] == "fallback" and result["action"] == "block"
    event = OverloadEvent(123, True, 40.0, 20.0, 10.0, 17.0)
    assert json.loads(to_json(overload_result(event))) == {
        "kind": "overloaded", "t_ns": 123, "overloaded": True, "demand_per_s": 40.0,
        "sustainable_per_s": 20.0, "full_model_per_s": 10.0, "target_per_s": 17.0,
    }
