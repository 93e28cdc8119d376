"""The Python side of the Godot bridge, without Godot: request parsing, settings, results."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lego_embed.engines.godot import (
    BridgeConfig,
    RequestBuilder,
    decision_result,
    failed_result,
    overload_result,
    parse_request,
    parse_request_options,
    stream_result,
    to_json,
)
from lego_embed.errors import (
    EngineBridgeError,
    InvalidGameStateError,
    PromptTemplateError,
    RuntimeConfigError,
)
from lego_embed.npc.output_spec import Choice, ChoiceThenLine, Line
from lego_embed.runtime.backpressure import OverloadEvent
from lego_embed.runtime.request import TokenEvent
from lego_embed.runtime.runtime import Decision

STATE = {"hp": 50, "enemy_hp": 80, "distance": 3.5, "enemy_last_action": "idle",
         "cooldowns": {"dodge": 0, "heal": 0, "heavy": 2}, "allies": 1, "persona": "brute"}


def test_a_combat_state_as_the_c_bridge_writes_it_is_parsed() -> None:
    text = json.dumps(["/root/Arena/Brute", STATE, ["block", "heal"], 300])
    request = parse_request(json.loads(text))
    assert (request.npc_id, request.fields, request.actions) == (
        "/root/Arena/Brute", STATE, ["block", "heal"])
    assert request.output == "choice" and request.prompt_template == ""
    assert request.deadline_ms == 300.0 and isinstance(request.deadline_ms, float)


def test_an_own_prompt_request_becomes_a_runtime_request() -> None:
    spec = {"output": "choice_then_line", "fields": {"visitor": "sailor", "mood": "calm"},
            "static_prompt": "You keep the lamps. ", "prompt_template": "A {visitor} comes.",
            "max_tokens": 8.0, "stop": ["\n"], "pace_tokens_per_s": 20}
    bridge = parse_request(["keeper", spec, ["wave", "light the lamp"], 1000])
    request = RequestBuilder().build(bridge)
    assert request.prompt.static == "You keep the lamps. "
    assert request.prompt.dynamic == "A sailor comes."
    assert request.output == ChoiceThenLine(("wave", "light the lamp"), 8, ("\n",))
    assert request.pace_tokens_per_s == 20.0
    assert len(request.warnings) == 1 and "field 'mood'" in request.warnings[0]
    line = RequestBuilder().build(parse_request(["k", {**spec, "output": "line"}, [], 1000]))
    assert line.output == Line(8, ("\n",))
    with pytest.raises(PromptTemplateError, match="field 'visitor' is missing"):
        RequestBuilder().build(parse_request(["k", {**spec, "fields": {}}, ["wave"], 1000]))


def test_a_combat_request_from_the_new_api_carries_persona_and_say_for() -> None:
    fields = {k: v for k, v in STATE.items() if k != "persona"}
    spec = {"output": "line", "fields": fields, "persona": "coward", "say_for": "block"}
    request = RequestBuilder().build(parse_request(["c", spec, [], 300]))
    assert request.prompt.static.startswith("persona coward")
    assert request.prompt.dynamic.endswith("action block say") and request.output == Line(24)
    choice = RequestBuilder().build(parse_request(["c", {**spec, "output": "choice"},
                                                  ["block"], 300]))
    assert choice.output == Choice(("block",))


def test_nan_from_godot_survives_the_json_hop_for_validation_to_reject() -> None:
    payload = json.loads('["npc", {"distance": NaN}, ["block"], 300]')
    assert math.isnan(parse_request(payload).fields["distance"])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (["npc", [], ["block"], 300], "state must be a Dictionary"),
        (["npc", STATE, [1, 2], 300], "Array of Strings"),
        (["npc", STATE, "block", 300], "Array of Strings"),
        (["npc", STATE, ["block"], "soon"], "deadline_ms must be a number"),
        (["npc", STATE, ["block"], True], "deadline_ms must be a number"),
        (["npc", {"output": "poem"}, ["block"], 300], "output 'poem'"),
        (["npc", {"output": "line", "fields": []}, [], 300], "fields must be a Dictionary"),
        (["npc", {"output": "line", "stop": "x"}, [], 300], "stop must be an Array"),
        (["npc", {"output": "line", "max_tokens": "8"}, [], 300], "max_tokens must be int"),
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


def test_streamed_tokens_become_results_under_the_bridge_id() -> None:
    event = TokenEvent(7, "npc", 2, " lamp", 123, 80.5, 366.7, True, 1)
    result = stream_result("token", 3, event)
    assert result["kind"] == "token" and result["request_id"] == 3
    assert result["runtime_request_id"] == 7 and result["text"] == " lamp"
    assert result["index"] == 2 and result["deadline_met"] is True


def test_numpy_numbers_become_plain_json() -> None:
    text = to_json({"p50": np.float64(1.5), "n": np.int64(3), "other": object})
    assert json.loads(text)["p50"] == 1.5 and json.loads(text)["n"] == 3


def test_request_options_become_fields_of_the_runtime_request() -> None:
    payload = json.loads(json.dumps(["npc", STATE, ["block", "heal"], 300,
                                     {"fallback": "block", "supersede": False}]))
    assert parse_request(payload).npc_id == "npc"
    assert parse_request_options(payload) == {"fallback": "block", "supersede": False}
    request = RequestBuilder().build(parse_request(payload))
    assert (request.fallback, request.supersede, request.corrections) == ("block", False, False)
    spec = {"output": "line", "fields": {"visitor": "sailor"}, "prompt_template": "{visitor}"}
    with pytest.raises(RuntimeConfigError, match="Line request takes no fallback"):
        RequestBuilder().build(parse_request(["k", spec, [], 1000, {"fallback": "wave"}]))
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
